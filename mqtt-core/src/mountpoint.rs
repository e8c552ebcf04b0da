//! Mountpoints: a listener's topic prefix that puts its clients in a namespace of their own.
//! Clients see and authorize against their own topics; the router sees them prefixed.

use std::sync::Arc;

use bytestring::ByteString;

/// A mountpoint resolved for one client, e.g. `"tenant1/dev7/"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mountpoint(Arc<str>);

impl Mountpoint {
    /// Replaces each `${name}` of a listener's template by its value in `values` (EMQX's
    /// `${clientid}`, `${username}`, and an adapter's own such as `${endpoint_name}`). An
    /// empty template or an empty result is no mountpoint at all.
    ///
    /// A value the template uses is refused when it is empty or holds a wildcard, a topic
    /// separator, a NUL or a placeholder: substituted, it would widen this client's prefix
    /// to other clients' topics (`+` for a client id subscribes to every client's), lead
    /// into another client's prefix (`alice/private`), or share one with every client that
    /// lacks the value.
    pub fn resolve(
        template: &str,
        values: &[(&'static str, &str)],
    ) -> Result<Option<Mountpoint>, UnsafeMountpointValue> {
        if template.is_empty() {
            return Ok(None);
        }
        let mut unsafe_value = None;
        let resolved = crate::template::expand(template, |name| {
            let (placeholder, value) = values.iter().find(|(known, _)| *known == name)?;
            if !is_safe_value(value) && unsafe_value.is_none() {
                unsafe_value = Some(UnsafeMountpointValue {
                    placeholder,
                    value: (*value).to_owned(),
                });
            }
            Some(*value)
        });
        match unsafe_value {
            Some(refused) => Err(refused),
            None => Ok((!resolved.is_empty()).then(|| Mountpoint(Arc::from(resolved)))),
        }
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

/// A value that a mountpoint's placeholder would have been replaced by, and why it was not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountpoint placeholder ${{{placeholder}}}: value {value:?} is empty or holds a wildcard, a separator or a placeholder")]
pub struct UnsafeMountpointValue {
    pub placeholder: &'static str,
    pub value: String,
}

fn is_safe_value(value: &str) -> bool {
    !value.is_empty() && !value.contains(['+', '#', '/', '\0']) && !value.contains("${")
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
        assert_eq!(Mountpoint::resolve("", &[("clientid", "c")]), Ok(None));
        let mountpoint = Mountpoint::resolve(
            "t/${username}/${clientid}/",
            &[("clientid", "c1"), ("username", "u")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(mountpoint.as_str(), "t/u/c1/");
        let unused =
            Mountpoint::resolve("t/${clientid}/", &[("clientid", "c1"), ("username", "+")]);
        assert_eq!(
            unused.unwrap().unwrap().as_str(),
            "t/c1/",
            "an unused value is not checked"
        );
    }

    #[test]
    fn wildcards_separators_placeholders_and_empty_values_are_refused() {
        for value in [
            "+",
            "#",
            "a/b",
            "alice/private",
            "${username}",
            "",
            "a\0b",
            "x+",
        ] {
            let refused =
                Mountpoint::resolve("t/${clientid}/", &[("clientid", value)]).unwrap_err();
            assert_eq!(refused.placeholder, "clientid", "{value:?}");
        }
        assert!(Mountpoint::resolve("t/${username}/", &[("username", "")]).is_err());
    }

    #[test]
    fn shared_groups_stay_in_front() {
        let mountpoint = Mountpoint::resolve("m/", &[]).unwrap().unwrap();
        assert_eq!(mountpoint.mount_filter("a/#"), "m/a/#");
        assert_eq!(mountpoint.mount_filter("$share/g/a/+"), "$share/g/m/a/+");
        assert_eq!(&*mountpoint.mount("a/b"), "m/a/b");
        assert_eq!(mountpoint.unmount("m/a/b"), "a/b");
        assert_eq!(mountpoint.unmount("x/a"), "x/a");
    }
}
