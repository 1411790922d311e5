//! Names the engine derives from keys: a task's group and prefix (`key_split_group`,
//! `key_split`), and a run_spec's `data_producer` flag.

use super::shared::Engine;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};
use std::borrow::Cow;
use std::rc::Rc;

static KEY_SPLIT: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

fn key_splitters(py: Python<'_>) -> PyResult<&(Py<PyAny>, Py<PyAny>)> {
    KEY_SPLIT.get_or_try_init(py, || -> PyResult<_> {
        let ks = py.import("dask.utils")?.getattr("key_split")?.unbind();
        let ksg = py
            .import("distributed.utils")?
            .getattr("key_split_group")?
            .unbind();
        Ok((ks, ksg))
    })
}

impl Engine {
    /// The (group, prefix) names of a key: `key_split_group(key)`, `key_split(key)`.
    /// The core names groups with strings. A group named with another object (a key
    /// such as `((1, 2), "x")` is grouped under the tuple `(1, 2)`) gets "\0" and a
    /// number, one per name as Python's dicts tell names apart (`1` and `1.0` are one
    /// group, as in distributed's `task_groups`); a str name starting with "\0" gets
    /// another "\0" in front. `group_name` gives the name back.
    pub(crate) fn group_and_prefix(&self, key: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
        let py = key.py();
        let (key_split, key_split_group) = key_splitters(py)?;
        // Fewer calls into Python, same names: a tuple key's group is its first element
        // and an exact tuple's prefix is its first element's (`key_split` recurses),
        // remembered per first element; a str key that `key_split_group` hands to
        // `key_split` has its group as prefix, named here when it is plain ASCII.
        let (group, prefix) = if let Ok(t) = key.cast::<PyTuple>() {
            let first = t.get_item(0)?;
            let prefix = if key.is_exact_instance_of::<PyTuple>() {
                self.prefix_of_first(py, &first, key_split.bind(py))?
            } else {
                key_split.bind(py).call1((key,))?.extract()?
            };
            (first, Some(prefix))
        } else if let Some(name) = (key.cast::<PyString>().ok())
            .and_then(|s| s.to_str().ok())
            .and_then(plain_str_name)
        {
            return Ok((escaped_group_name(&name).into_owned(), name));
        } else {
            let group = key_split_group.bind(py).call1((key,))?;
            let prefix = match key.cast::<PyString>() {
                Ok(s) if group_is_prefix(s.to_str()?) => group.extract().ok(),
                _ => None,
            };
            (group, prefix)
        };
        let prefix = match prefix {
            Some(p) => p,
            None => key_split.bind(py).call1((key,))?.extract()?,
        };
        let group = match group.extract::<String>() {
            Ok(name) => escaped_group_name(&name).into_owned(),
            Err(_) => {
                let names = self.other_group_names.bind(py);
                match names.get_item(&group)? {
                    Some(encoded) => encoded.extract()?,
                    None => {
                        let encoded = format!("\0{}", names.len() / 2);
                        names.set_item(&group, &encoded)?;
                        names.set_item(&encoded, &group)?;
                        encoded
                    }
                }
            }
        };
        Ok((group, prefix))
    }

    /// `key_split(first)`, remembered (a dask collection's chunk keys share their first
    /// element); forgotten wholesale past 100,000 names, as `key_split`'s own cache.
    fn prefix_of_first(
        &self,
        py: Python<'_>,
        first: &Bound<'_, PyAny>,
        key_split: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        let cache = self.prefix_of_first.bind(py);
        if let Some(p) = cache.get_item(first)? {
            return p.extract();
        }
        let p = key_split.call1((first,))?;
        if cache.len() >= 100_000 {
            cache.clear();
        }
        cache.set_item(first, &p)?;
        p.extract()
    }

    /// A group's name as distributed has it (`TaskGroup.name`, the keys of `task_groups`).
    pub(crate) fn group_name<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(escaped) = name.strip_prefix('\0') else {
            return Ok(PyString::new(py, name).into_any());
        };
        if escaped.starts_with('\0') {
            return Ok(PyString::new(py, escaped).into_any());
        }
        match self.other_group_names.bind(py).get_item(name)? {
            Some(obj) => Ok(obj),
            None => Ok(PyString::new(py, name).into_any()),
        }
    }
}

/// `group_and_prefix` over a graph's keys: keys that name the same group (tuple keys
/// with the same first element, consecutive keys with the same names) share the names.
#[derive(Default)]
pub(crate) struct Namer<'py> {
    last_first: Option<(Bound<'py, PyAny>, Rc<str>, Rc<str>)>,
    last: Option<(Rc<str>, Rc<str>)>,
}

impl<'py> Namer<'py> {
    pub(crate) fn group_and_prefix(
        &mut self,
        engine: &Engine,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<(Rc<str>, Rc<str>)> {
        // an exact tuple's names depend on its first element only
        if let Ok(t) = key.cast_exact::<PyTuple>() {
            let first = t.get_item(0)?;
            if let Some((f, g, p)) = &self.last_first {
                if f.is(&first) {
                    return Ok((g.clone(), p.clone()));
                }
            }
            let (g, p) = self.share(engine.group_and_prefix(key)?);
            self.last_first = Some((first, g.clone(), p.clone()));
            return Ok((g, p));
        }
        Ok(self.share(engine.group_and_prefix(key)?))
    }

    fn share(&mut self, (group, prefix): (String, String)) -> (Rc<str>, Rc<str>) {
        if let Some((g, p)) = &self.last {
            if **g == *group && **p == *prefix {
                return (g.clone(), p.clone());
            }
        }
        let p: Rc<str> = prefix.into();
        let g: Rc<str> = if *group == *p {
            p.clone()
        } else {
            group.into()
        };
        self.last = Some((g.clone(), p.clone()));
        (g, p)
    }
}

/// `run_spec.data_producer` of a task spec (false where it has none).
pub(crate) fn data_producer(spec: &Bound<'_, PyAny>) -> bool {
    spec.getattr(intern!(spec.py(), "data_producer"))
        .and_then(|v| v.is_truthy())
        .unwrap_or(false)
}

/// The prefix name of a str key named in Rust: one that `key_split_group` hands to
/// `key_split` and that is plain ASCII; its group is the same name
/// (`escaped_group_name`). `None`: the engine's `group_and_prefix` names it.
pub(crate) fn plain_str_name(key: &str) -> Option<String> {
    if !group_is_prefix(key) {
        return None;
    }
    ascii_key_split(key)
}

/// A str group name as the core keeps it: one starting with "\0" gets another "\0" in
/// front (names of other objects are "\0" and a number).
pub(crate) fn escaped_group_name(name: &str) -> Cow<'_, str> {
    match name.starts_with('\0') {
        true => Cow::Owned(format!("\0{name}")),
        false => Cow::Borrowed(name),
    }
}

/// Whether `key_split_group` names this str key with `key_split(key)`: not "(...",
/// not 32 hex digits, not "<...".
fn group_is_prefix(key: &str) -> bool {
    !(key.starts_with('(') || key.starts_with('<') || is_hex32(key))
}

/// `key_split(key)` of dask 2026.6–2026.8 for a plain ASCII str key, `None` where the
/// engine leaves it to dask's own (non-ASCII, a name that would be empty or start with
/// "<"): the first "-"-separated word (stripped of `_'()"` up to a comma unless it starts
/// with a letter), then each following word made only of letters, up to the first one
/// that is not or that looks like a hex token (8 letters starting with a-f); a 32-digit
/// hex name is "data".
fn ascii_key_split(key: &str) -> Option<String> {
    if !key.is_ascii() {
        return None;
    }
    let mut words = key.split('-');
    let first = words.next()?;
    let mut name = match first.as_bytes().first() {
        None => return None,
        Some(c) if c.is_ascii_alphabetic() => first.to_owned(),
        Some(_) => {
            let head = first.split(',').next().unwrap_or("");
            head.trim_matches(|c| matches!(c, '_' | '\'' | '(' | ')' | '"'))
                .to_owned()
        }
    };
    for word in words {
        let alpha = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic());
        let hex_token = word.len() == 8 && matches!(word.as_bytes()[0], b'a'..=b'f');
        if !alpha || hex_token {
            break;
        }
        name.push('-');
        name.push_str(word);
    }
    if is_hex32(&name) {
        return Some("data".to_owned());
    }
    if name.is_empty() || name.starts_with('<') {
        return None;
    }
    Some(name)
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'a'..=b'f' | b'0'..=b'9'))
}
