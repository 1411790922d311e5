from collections.abc import Hashable, Mapping
from typing import Any, TypeAlias, final

__version__: str

_Msgs: TypeAlias = dict[Any, list[dict[str, Any]]]

@final
class Engine:
    """The scheduler state in Rust; stimuli return ``(client_msgs, worker_msgs)``."""

    def __new__(cls, *, validate: bool = False) -> Engine: ...
    def add_worker(
        self,
        address: str,
        *,
        server_id: str,
        nthreads: int,
        memory_limit: int = 0,
        name: Hashable | None = None,
        status: str = "running",
        resources: Mapping[str, float] | None = None,
        stimulus_id: str = "add-worker",
    ) -> tuple[_Msgs, _Msgs]: ...
    def update_graph(
        self,
        *,
        dsk: dict[Hashable, Any],
        keys: Any,
        ordered: dict[Hashable, int],
        client: str,
        stimulus_id: str,
        user_priority: float | dict[Hashable, int] | None = None,
        fifo_timeout: float = 0.0,
        start: float = 0.0,
        submitting_task: Hashable | None = None,
        actors: bool | list[Hashable] | None = None,
    ) -> tuple[_Msgs, _Msgs]: ...
    def handle_task_finished(
        self,
        key: Hashable,
        worker: str,
        stimulus_id: str,
        *,
        run_id: int,
        nbytes: int = ...,
        type: bytes | None = None,
        typename: str | None = None,
        startstops: list[dict[str, Any]] | None = None,
        metadata: dict[str, Any] | None = None,
        **_kwargs: Any,
    ) -> tuple[_Msgs, _Msgs]: ...
    def handle_task_erred(
        self,
        key: Hashable,
        stimulus_id: str,
        *,
        worker: str,
        run_id: int,
        exception: Any = None,
        traceback: Any = None,
        exception_text: str | None = None,
        traceback_text: str | None = None,
        **_kwargs: Any,
    ) -> tuple[_Msgs, _Msgs]: ...
    def remove_worker(
        self, address: str, *, stimulus_id: str, expected: bool = False
    ) -> tuple[_Msgs, _Msgs]: ...
    def handle_worker_status_change(
        self, status: str, worker: str, stimulus_id: str
    ) -> tuple[_Msgs, _Msgs]: ...
    def client_releases_keys(
        self, keys: Any, client: str, stimulus_id: str
    ) -> tuple[_Msgs, _Msgs]: ...
    def validate_state(self) -> None: ...
    @property
    def transition_counter(self) -> int: ...
    @property
    def n_tasks(self) -> int: ...
    def __len__(self) -> int: ...
    def task_state(self, key: Hashable) -> str: ...
    def snapshot(self) -> dict[Hashable, dict[str, Any]]: ...
    def worker_snapshot(self) -> dict[str, dict[str, Any]]: ...
    def containers(self) -> dict[str, Any]: ...
