//! EMQX-style `${name}` placeholders, as mountpoints and `clientinfo_override` use them.

/// Replaces each `${name}` that `value` knows in one pass, so a value that itself contains
/// `${...}` is never expanded again; an unknown or unclosed placeholder stays as written.
pub fn expand<'a>(template: &str, mut value: impl FnMut(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some((before, after)) = rest.split_once("${") {
        out.push_str(before);
        match after.split_once('}') {
            Some((name, tail)) => {
                match value(name) {
                    Some(replacement) => out.push_str(replacement),
                    None => {
                        out.push_str("${");
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = tail;
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<&'static str> {
        match name {
            "clientid" => Some("dev-${username}"),
            "username" => Some("u"),
            _ => None,
        }
    }

    #[test]
    fn known_names_are_replaced_once_and_the_rest_kept() {
        assert_eq!(
            expand("a/${clientid}/${username}/", lookup),
            "a/dev-${username}/u/"
        );
        assert_eq!(expand("${other}-${username}", lookup), "${other}-u");
        assert_eq!(expand("x${username", lookup), "x${username");
        assert_eq!(expand("", lookup), "");
    }
}
