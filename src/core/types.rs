//! Identifiers, task states, priorities and worker statuses shared by the core.

use std::cmp::Ordering;

macro_rules! id_type {
    ($name:ident) => {
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            #[inline]
            pub fn idx(self) -> usize {
                self.0 as usize
            }
        }
        // arena indices stop far below u32::MAX (each slot is hundreds of bytes)
        impl crate::core::pyset::SetKey for $name {
            const VACANT: Self = $name(u32::MAX);
        }
    };
}
id_type!(TaskId);
id_type!(WorkerId);
id_type!(ClientId);
id_type!(GroupId);
id_type!(PrefixId);

/// `Option<Id>` in the id's own 4 bytes: its vacant value is `None` (an `Option<u32>`
/// takes 8).
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct OptId<T>(T);

impl<T: crate::core::pyset::SetKey> OptId<T> {
    pub const NONE: Self = OptId(T::VACANT);

    #[inline]
    pub fn new(id: Option<T>) -> Self {
        OptId(id.unwrap_or(T::VACANT))
    }

    #[inline]
    pub fn get(self) -> Option<T> {
        (self.0 != T::VACANT).then_some(self.0)
    }
}

/// `TaskStateState` of distributed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TaskStateState {
    Released,
    Waiting,
    NoWorker,
    Queued,
    Processing,
    Memory,
    Erred,
    Forgotten,
}

/// distributed's `ALL_TASK_STATES` order is used for the per-group counters.
pub const ALL_TASK_STATES: [TaskStateState; 8] = [
    TaskStateState::Released,
    TaskStateState::Waiting,
    TaskStateState::NoWorker,
    TaskStateState::Queued,
    TaskStateState::Processing,
    TaskStateState::Memory,
    TaskStateState::Erred,
    TaskStateState::Forgotten,
];

impl TaskStateState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::Waiting => "waiting",
            Self::NoWorker => "no-worker",
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Memory => "memory",
            Self::Erred => "erred",
            Self::Forgotten => "forgotten",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "released" => Self::Released,
            "waiting" => Self::Waiting,
            "no-worker" => Self::NoWorker,
            "queued" => Self::Queued,
            "processing" => Self::Processing,
            "memory" => Self::Memory,
            "erred" => Self::Erred,
            "forgotten" => Self::Forgotten,
            _ => return None,
        })
    }

    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A Python number inside a priority tuple: ints stay ints so the tuple handed back to
/// Python has the same types as distributed's.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    #[inline]
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn cmp_num(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (a, b) => a
                .as_f64()
                .partial_cmp(&b.as_f64())
                .unwrap_or(Ordering::Equal),
        }
    }
}

/// `ts.priority`: `(-user_priority, generation, internal_priority)`, compared like a tuple.
/// Packed (every task and every queued entry has one): each element's 8 bytes, and
/// which of them are floats.
#[derive(Copy, Clone, Debug)]
pub struct Priority {
    bits: [u64; 3],
    floats: FloatMask,
}

/// Which elements of a `Priority` are floats (bit i: element i). An enum, so that
/// `Option<Priority>` needs no room of its own.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
enum FloatMask {
    M0,
    M1,
    M2,
    M3,
    M4,
    M5,
    M6,
    M7,
}

const FLOAT_MASKS: [FloatMask; 8] = [
    FloatMask::M0,
    FloatMask::M1,
    FloatMask::M2,
    FloatMask::M3,
    FloatMask::M4,
    FloatMask::M5,
    FloatMask::M6,
    FloatMask::M7,
];

impl Priority {
    pub fn new(values: [Num; 3]) -> Self {
        let mut bits = [0u64; 3];
        let mut floats = 0usize;
        for (i, v) in values.iter().enumerate() {
            bits[i] = match *v {
                Num::Int(x) => x as u64,
                Num::Float(f) => {
                    floats |= 1 << i;
                    f.to_bits()
                }
            };
        }
        Priority {
            bits,
            floats: FLOAT_MASKS[floats],
        }
    }

    /// Element `i` (0, 1 or 2).
    #[inline]
    pub fn get(&self, i: usize) -> Num {
        if self.floats as u8 & (1 << i) != 0 {
            Num::Float(f64::from_bits(self.bits[i]))
        } else {
            Num::Int(self.bits[i] as i64)
        }
    }

    pub fn cmp_prio(&self, other: &Priority) -> Ordering {
        for i in 0..3 {
            match self.get(i).cmp_num(other.get(i)) {
                Ordering::Equal => continue,
                o => return o,
            }
        }
        Ordering::Equal
    }
}

impl PartialEq for Priority {
    fn eq(&self, other: &Self) -> bool {
        (0..3).all(|i| self.get(i) == other.get(i))
    }
}

/// `distributed.core.Status`, as far as the scheduler's state looks at it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum WorkerStatus {
    Undefined,
    Created,
    Init,
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
    Closing,
    ClosingGracefully,
    Closed,
    Failed,
    DontReply,
}

impl WorkerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undefined => "undefined",
            Self::Created => "created",
            Self::Init => "init",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Closing => "closing",
            Self::ClosingGracefully => "closing_gracefully",
            Self::Closed => "closed",
            Self::Failed => "failed",
            Self::DontReply => "dont_reply",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "undefined" => Self::Undefined,
            "created" => Self::Created,
            "init" => Self::Init,
            "starting" => Self::Starting,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "closing" => Self::Closing,
            "closing_gracefully" => Self::ClosingGracefully,
            "closed" => Self::Closed,
            "failed" => Self::Failed,
            "dont_reply" => Self::DontReply,
            _ => return None,
        })
    }
}

/// Errors raised by the core; converted to Python exceptions once, at the boundary.
#[derive(Clone, Debug, PartialEq)]
pub enum CoreError {
    UnknownKey(String),
    UnknownWorker(String),
    UnknownClient(String),
    WorkerExists(String),
    ImpossibleTransition {
        key: String,
        start: &'static str,
        finish: &'static str,
    },
    Invalid(String),
    Validation(String),
    /// `validate=True`: a task forgotten though something still needs it (distributed's
    /// `AssertionError("Unreachable", str(ts))`).
    Unreachable(TaskId),
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreError::UnknownKey(k) => write!(f, "{k}"),
            CoreError::UnknownWorker(w) => write!(f, "{w}"),
            CoreError::UnknownClient(c) => write!(f, "{c}"),
            CoreError::WorkerExists(w) => write!(f, "Worker already exists {w}"),
            CoreError::ImpossibleTransition { key, start, finish } => {
                write!(
                    f,
                    "Impossible transition from {start} to {finish} for {key}"
                )
            }
            CoreError::Invalid(m) | CoreError::Validation(m) => f.write_str(m),
            CoreError::Unreachable(t) => write!(f, "Unreachable: {t:?}"),
        }
    }
}

impl std::error::Error for CoreError {}

pub type CoreResult<T> = Result<T, CoreError>;

/// A sum of task sizes: each size fits an `i64`, so their sums (unbounded ints in
/// distributed) are kept wide enough never to wrap.
pub type ByteTotal = i128;

pub fn cmp_opt_prio(a: &Option<Priority>, b: &Option<Priority>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp_prio(b),
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
    }
}
