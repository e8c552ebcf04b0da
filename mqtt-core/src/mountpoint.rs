//! Mountpoints: a listener's topic prefix that puts its clients in a namespace of their own.
//! Clients see and authorize against their own topics; the router sees them prefixed.

use std::sync::Arc;

use bytestring::ByteString;

/// A mountpoint resolved for one client, e.g. `"tenant1/dev7/"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mountpoint(Arc<str>);

impl Mountpoint {
    /// Replaces `${clientid}` and `${username}` (EMQX's placeholders) in a listener's template.
    /// An empty template or an empty result is no mountpoint at all.
    pub fn resolve(template: &str, client_id: &str, username: Option<&str>) -> Option<Mountpoint> {
        if template.is_empty() {
            return None;
        }
        let resolved = crate::template::expand(template, |name| match name {
            "clientid" => Some(client_id),
            "username" => Some(username.unwrap_or("")),
            _ => None,
        });
        (!resolved.is_empty()).then(|| Mountpoint(Arc::from(resolved)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn mount(&self, topic: &str) -> ByteString {
        let mut mounted = String::with_capacity(self.0.len() + topic.len());
        mounted.push_str(&self.0);
        mounted.push_str(topic);
        ByteString::from(mounted)
    }

    /// Mounts a subscription's filter: `$share/{group}/` stays in front, as it names the
    /// group rather than a topic.
    pub fn mount_filter(&self, filter: &str) -> String {
        if let Some(rest) = filter.strip_prefix("$share/") {
            if let Some((group, topic_filter)) = rest.split_once('/') {
                return format!("$share/{group}/{}{topic_filter}", self.0);
            }
        }
        format!("{}{filter}", self.0)
    }

    /// The topic as the client knows it. A message from outside the mountpoint (only
    /// possible through a filter that was mounted into it) keeps its full topic.
    pub fn unmount<'a>(&self, topic: &'a str) -> &'a str {
        topic.strip_prefix(&*self.0).unwrap_or(topic)
    }
}

/// Mounts when there is a mountpoint; borrows the topic otherwise.
pub fn mounted_filter<'a>(
    mountpoint: Option<&Mountpoint>,
    filter: &'a str,
) -> std::borrow::Cow<'a, str> {
    match mountpoint {
        Some(mountpoint) => std::borrow::Cow::Owned(mountpoint.mount_filter(filter)),
        None => std::borrow::Cow::Borrowed(filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_an_empty_template_is_none() {
        assert_eq!(Mountpoint::resolve("", "c", None), None);
        let mountpoint =
            Mountpoint::resolve("t/${username}/${clientid}/", "c1", Some("u")).unwrap();
        assert_eq!(mountpoint.as_str(), "t/u/c1/");
        assert_eq!(
            Mountpoint::resolve("${username}", "c1", None),
            None,
            "no user name leaves nothing to mount"
        );
    }

    #[test]
    fn shared_groups_stay_in_front() {
        let mountpoint = Mountpoint::resolve("m/", "c", None).unwrap();
        assert_eq!(mountpoint.mount_filter("a/#"), "m/a/#");
        assert_eq!(mountpoint.mount_filter("$share/g/a/+"), "$share/g/m/a/+");
        assert_eq!(&*mountpoint.mount("a/b"), "m/a/b");
        assert_eq!(mountpoint.unmount("m/a/b"), "a/b");
        assert_eq!(mountpoint.unmount("x/a"), "x/a");
    }
}
