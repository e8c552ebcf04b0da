//! The operator's way to a registered device, beside MQTT's: a command handed to the
//! device's [`Device`] is queued by its channel exactly as one delivered on the command
//! topic (parsed by `command.rs`, sent in turn, its answer published on the response
//! topic), and the last result of each path and action stays for EMQX's `lookup`.
//!
//! [`Devices`] is the one registry of the live registrations, by client id (`device_id`,
//! by default the endpoint name): a channel enters its device when a registration opens
//! and takes it out when it ends, unless another registration of the same client id has
//! replaced it meanwhile.
//!
//! What a device keeps is bounded whatever the device or the operator does: at most
//! [`MAX_PENDING`] commands wait for the channel to take them, at most [`MAX_RESULTS`]
//! results are kept, the oldest going first, and together at most [`MAX_RESULT_BYTES`];
//! a result larger than that is kept without its content.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use mqtt_core::session::Wakeup;
use parking_lot::Mutex;
use serde_json::{json, Map, Value as Json};
use translations::link_format;
use translations::lwm2m::objects::ObjectRegistry;
use translations::lwm2m::Path;

use crate::command::{self, Command, CommandError};

/// Commands handed over and not yet taken by the channel (it takes them on its next
/// wake-up, then its own queue, `max_queued_commands`, bounds them).
pub const MAX_PENDING: usize = 16;

/// Results kept per device: one per (path, action), the least recently answered dropped.
pub const MAX_RESULTS: usize = 32;

/// The bytes of the results a device keeps (paths, actions and contents as JSON text).
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// Why a command is not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] CommandError),
    #[error("{MAX_PENDING} commands already wait for this device")]
    Busy,
}

/// The last answer of a device for one path and action.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupResult {
    /// `"2.05"`.
    pub code: String,
    /// `"content"`.
    pub code_msg: String,
    /// What the answer carried, as published: values for a read or an observation, the
    /// links for a discover.
    pub content: Option<Json>,
}

#[derive(Debug)]
struct Kept {
    path: String,
    action: String,
    result: LookupResult,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    pending: VecDeque<Command>,
    results: VecDeque<Kept>,
    result_bytes: usize,
}

/// One registered device as the operator reaches it.
pub struct Device {
    wakeup: Arc<dyn Wakeup>,
    objects: Arc<ObjectRegistry>,
    inner: Mutex<Inner>,
}

impl Device {
    pub(crate) fn new(wakeup: Arc<dyn Wakeup>, objects: Arc<ObjectRegistry>) -> Device {
        Device {
            wakeup,
            objects,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Hands an EMQX JSON command to the device's channel. It is checked first as the
    /// channel would build its request, so an invalid one is refused here, and nothing is
    /// sent for it.
    pub fn submit(&self, body: Json) -> Result<(), SubmitError> {
        let payload = body.to_string();
        let command = Command::parse(payload.as_bytes()).map_err(|(_, error)| error)?;
        command::to_request(&command, &[])?;
        {
            let mut inner = self.inner.lock();
            if inner.pending.len() >= MAX_PENDING {
                return Err(SubmitError::Busy);
            }
            inner.pending.push_back(command);
        }
        self.wakeup.wake();
        Ok(())
    }

    /// The last result for `path` and `action` (a command's `msgType`; notifications of an
    /// observation count as `observe`).
    pub fn lookup(&self, path: &str, action: &str) -> Option<LookupResult> {
        let inner = self.inner.lock();
        inner
            .results
            .iter()
            .find(|kept| kept.path == path && kept.action == action)
            .map(|kept| kept.result.clone())
    }

    /// The object definitions the device's values are typed by.
    pub fn objects(&self) -> &ObjectRegistry {
        &self.objects
    }

    pub(crate) fn take_pending(&self) -> Vec<Command> {
        self.inner.lock().pending.drain(..).collect()
    }

    /// Keeps an answer as published (`{"msgType", "data": {"reqPath", "code", "codeMsg",
    /// "content"}}`) under `action`.
    pub(crate) fn record(&self, action: &str, body: &Json) {
        let data = &body["data"];
        let (Some(path), Some(code), Some(code_msg)) = (
            data["reqPath"].as_str(),
            data["code"].as_str(),
            data["codeMsg"].as_str(),
        ) else {
            return;
        };
        // One written form per path, whichever a command used (`3/0/0`, `/3/0/0/`).
        let path = path
            .parse::<Path>()
            .map_or_else(|_| path.to_owned(), |p| p.to_string());
        let path = path.as_str();
        let mut content = data.get("content").cloned();
        let head = path.len() + action.len() + code.len() + code_msg.len();
        let mut bytes = head + content.as_ref().map_or(0, |c| c.to_string().len());
        if bytes > MAX_RESULT_BYTES {
            content = None;
            bytes = head;
        }
        let kept = Kept {
            path: path.to_owned(),
            action: action.to_owned(),
            result: LookupResult {
                code: code.to_owned(),
                code_msg: code_msg.to_owned(),
                content,
            },
            bytes,
        };
        let mut inner = self.inner.lock();
        if let Some(at) = inner
            .results
            .iter()
            .position(|old| old.path == kept.path && old.action == kept.action)
        {
            if let Some(old) = inner.results.remove(at) {
                inner.result_bytes -= old.bytes;
            }
        }
        inner.result_bytes += kept.bytes;
        inner.results.push_back(kept);
        while inner.results.len() > MAX_RESULTS || inner.result_bytes > MAX_RESULT_BYTES {
            match inner.results.pop_front() {
                Some(old) => inner.result_bytes -= old.bytes,
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn kept(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.results.len(), inner.result_bytes)
    }
}

/// The live registrations, by client id.
#[derive(Default)]
pub struct Devices {
    map: Mutex<HashMap<Arc<str>, Arc<Device>>>,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("registered", &self.len())
            .finish()
    }
}

impl Devices {
    pub fn get(&self, client_id: &str) -> Option<Arc<Device>> {
        self.map.lock().get(client_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn insert(&self, client_id: Arc<str>, device: Arc<Device>) {
        self.map.lock().insert(client_id, device);
    }

    /// Takes `device` out, but not another registration's that took its client id since.
    pub(crate) fn remove(&self, client_id: &str, device: &Arc<Device>) {
        let mut map = self.map.lock();
        if map
            .get(client_id)
            .is_some_and(|held| Arc::ptr_eq(held, device))
        {
            map.remove(client_id);
        }
    }
}

/// A discover's links (`["</3/0>", "</3/0/0>", ...]`, as its answer is published) as
/// EMQX's lookup gives them: one entry per resource, named and typed by its definition;
/// a resource of an object without a definition gets its path alone.
pub fn discovered_resources(links: &Json, objects: &ObjectRegistry) -> Json {
    let Some(links) = links.as_array() else {
        return Json::Array(Vec::new());
    };
    let entries = links
        .iter()
        .filter_map(Json::as_str)
        .filter_map(|link| {
            let links = link_format::parse(link).ok()?;
            let target = links.first()?.target;
            // An alternate path's segments come before the object id.
            let ids: Vec<u16> = target
                .split('/')
                .filter(|s| !s.is_empty())
                .skip_while(|s| s.parse::<u16>().is_err())
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let path = Path::new(ids).ok()?;
            let (object, resource) = (path.object()?, path.resource()?);
            let mut entry = Map::new();
            entry.insert("path".into(), path.to_string().into());
            if let Some(definition) = objects
                .object(object)
                .and_then(|o| o.resources.get(&resource))
            {
                entry.insert("name".into(), definition.name.clone().into());
                entry.insert("operations".into(), definition.operations.clone().into());
                if definition.operations != "E" {
                    entry.insert("dataType".into(), definition.kind.name().into());
                }
            }
            Some(Json::Object(entry))
        })
        .collect();
    Json::Array(entries)
}

/// An EMQX command as the admin API builds it: `{"msgType", "data": {...}}`.
pub fn command_json(msg_type: &str, data: Json) -> Json {
    json!({ "msgType": msg_type, "data": data })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wakeup for Count {
        fn wake(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn device() -> (Device, Arc<Count>) {
        let count = Arc::new(Count(Default::default()));
        (
            Device::new(count.clone(), Arc::new(ObjectRegistry::built_in())),
            count,
        )
    }

    fn answer(path: &str, content: Json) -> Json {
        json!({"msgType": "read", "data": {"reqPath": path, "code": "2.05", "codeMsg": "content", "content": content}})
    }

    #[test]
    fn commands_are_checked_then_bounded() {
        let (device, woken) = device();
        let read = command_json("read", json!({"path": "/3/0/0"}));
        assert!(device.submit(read.clone()).is_ok());
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        let bad = command_json(
            "write",
            json!({"path": "/3/0/14", "type": "Integer", "value": "x"}),
        );
        assert!(matches!(device.submit(bad), Err(SubmitError::Invalid(_))));
        for _ in 1..MAX_PENDING {
            device.submit(read.clone()).unwrap();
        }
        assert_eq!(device.submit(read.clone()), Err(SubmitError::Busy));
        assert_eq!(device.take_pending().len(), MAX_PENDING);
        assert!(device.submit(read).is_ok());
    }

    #[test]
    fn results_replace_their_path_and_action_and_stay_bounded() {
        let (device, _) = device();
        assert_eq!(device.lookup("/3/0/0", "read"), None);
        device.record("read", &answer("/3/0/0", json!([{"value": "a"}])));
        device.record("read", &answer("/3/0/0", json!([{"value": "b"}])));
        assert_eq!(device.kept().0, 1);
        let result = device.lookup("/3/0/0", "read").unwrap();
        assert_eq!(result.content, Some(json!([{"value": "b"}])));
        assert_eq!(device.lookup("/3/0/0", "observe"), None);

        for i in 0..1000 {
            device.record(
                "read",
                &answer(&format!("/3/0/{i}"), json!("x".repeat(900))),
            );
        }
        let (count, bytes) = device.kept();
        assert!(
            count <= MAX_RESULTS && bytes <= MAX_RESULT_BYTES,
            "{count} {bytes}"
        );
        assert!(device.lookup("/3/0/999", "read").is_some());
        assert!(device.lookup("/3/0/0", "read").is_none());

        // Too big to keep: kept without its content.
        device.record(
            "read",
            &answer("/5/0/0", json!("y".repeat(MAX_RESULT_BYTES))),
        );
        let result = device.lookup("/5/0/0", "read").unwrap();
        assert_eq!((result.code.as_str(), result.content), ("2.05", None));
        assert!(device.kept().1 <= MAX_RESULT_BYTES);
    }

    #[test]
    fn discovered_links_are_named_by_the_definitions() {
        let objects = ObjectRegistry::built_in();
        let links = json!([
            "</3/0>",
            "</3/0/0>",
            "</3/0/4>",
            "</lwm2m/3/0/13>;pmin=10",
            "</9999/0/1>",
            "junk",
            // Read as link format: a quoted `>` is text, an unterminated target no link.
            "</3/0/1>;title=\"x>/5/0/1,y\"",
            "</3/0/2",
        ]);
        assert_eq!(
            discovered_resources(&links, &objects),
            json!([
                {"path": "/3/0/0", "name": "Manufacturer", "operations": "R", "dataType": "String"},
                {"path": "/3/0/4", "name": "Reboot", "operations": "E"},
                {"path": "/3/0/13", "name": "Current Time", "operations": "RW", "dataType": "Time"},
                {"path": "/9999/0/1"},
                {"path": "/3/0/1", "name": "Model Number", "operations": "R", "dataType": "String"},
            ])
        );
    }

    #[test]
    fn a_replaced_registration_does_not_remove_its_successor() {
        let devices = Devices::default();
        let (first, _) = device();
        let (second, _) = device();
        let (first, second) = (Arc::new(first), Arc::new(second));
        devices.insert(Arc::from("ep"), first.clone());
        devices.insert(Arc::from("ep"), second.clone());
        devices.remove("ep", &first);
        assert!(devices.get("ep").is_some_and(|d| Arc::ptr_eq(&d, &second)));
        devices.remove("ep", &second);
        assert!(devices.is_empty());
    }
}
