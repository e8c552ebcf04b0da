//! The configuration written back as TOML for people to read (`gateway config print`), with
//! what could let someone in masked.

use crate::Config;

/// Keys whose text is a secret wherever they appear in the schema (today
/// `gateway.mqttsn.clientinfo_override.password`). A key is matched by its own name, so a
/// secret added under one of these names later is masked without a change here; keys naming
/// files (`keyfile`, `psk_file`, `password_file`) are paths, shown as they are.
const SECRET_KEYS: [&str; 4] = ["password", "passcode", "secret", "token"];

/// What a masked value is printed as.
pub const MASKED: &str = "<masked>";

#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    #[error("the configuration cannot be written as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("the configuration written as TOML does not read back: {0}")]
    Reparse(#[from] toml_edit::TomlError),
}

impl Config {
    /// The whole configuration as TOML, in the schema's order, each non-empty secret
    /// (see [`SECRET_KEYS`]) replaced by [`MASKED`] unless it holds nothing but `${...}`
    /// placeholders, which name what the client presented and reveal nothing.
    pub fn to_masked_toml(&self) -> Result<String, PrintError> {
        let text = toml::to_string(self)?;
        let mut document: toml_edit::DocumentMut = text.parse()?;
        mask_table(document.as_table_mut());
        Ok(document.to_string())
    }
}

fn mask_table(table: &mut toml_edit::Table) {
    for (key, item) in table.iter_mut() {
        mask_item(key.get(), item);
    }
}

fn mask_item(key: &str, item: &mut toml_edit::Item) {
    match item {
        toml_edit::Item::Table(table) => mask_table(table),
        toml_edit::Item::ArrayOfTables(tables) => tables.iter_mut().for_each(mask_table),
        toml_edit::Item::Value(value) => mask_value(key, value),
        toml_edit::Item::None => {}
    }
}

fn mask_value(key: &str, value: &mut toml_edit::Value) {
    match value {
        toml_edit::Value::String(text)
            if SECRET_KEYS.contains(&key) && !only_placeholders(text.value()) =>
        {
            *value = toml_edit::Value::from(MASKED);
        }
        toml_edit::Value::InlineTable(table) => {
            for (key, value) in table.iter_mut() {
                mask_value(key.get(), value);
            }
        }
        toml_edit::Value::Array(values) => {
            values.iter_mut().for_each(|value| mask_value(key, value));
        }
        _ => {}
    }
}

/// Whether `text` is empty or made of `${name}` placeholders alone.
fn only_placeholders(mut text: &str) -> bool {
    while !text.is_empty() {
        let Some(rest) = text.strip_prefix("${") else {
            return false;
        };
        let Some(end) = rest.find('}') else {
            return false;
        };
        text = rest.get(end + 1..).unwrap_or_default();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_configuration_reads_back_as_the_same_one() {
        let defaults = Config::defaults().unwrap();
        let printed = defaults.to_masked_toml().unwrap();
        assert_eq!(Config::from_toml_str(&printed).unwrap(), defaults);

        let changed = Config::from_toml_str(
            r#"
            storage = "memory"
            [log]
            level = "debug,mqtt_core=trace"
            [auth]
            acl_file = "/etc/gateway/acl"
            [listeners.tcp.lan]
            bind = "127.0.0.1:11883"
            mountpoint = "tenant/${clientid}/"
            [[gateway.mqttsn.predefined]]
            id = 7
            topic = "sensors/temp"
            [gateway.mqttsn.clientinfo_override]
            password = "${password}"
            "#,
        )
        .unwrap();
        let printed = changed.to_masked_toml().unwrap();
        assert_eq!(Config::from_toml_str(&printed).unwrap(), changed);
        assert!(
            printed.contains("acl_file = \"/etc/gateway/acl\""),
            "{printed}"
        );
    }

    #[test]
    fn secrets_are_masked_and_file_paths_are_not() {
        let config = Config::from_toml_str(
            r#"
            [auth]
            allow_anonymous = false
            password_file = "/etc/gateway/passwd"
            [gateway.mqttsn.clientinfo_override]
            username = "${clientid}"
            password = "shared-s3cret"
            [gateway.coap.listeners.dtls.default.dtls_options]
            psk_file = "/etc/gateway/psk.txt"
            [listeners.ssl.default.tls]
            certfile = "/etc/gateway/server.pem"
            keyfile = "/etc/gateway/server.key"
            "#,
        )
        .unwrap();
        let printed = config.to_masked_toml().unwrap();
        assert!(!printed.contains("shared-s3cret"), "{printed}");
        assert!(
            printed.contains(&format!("password = \"{MASKED}\"")),
            "{printed}"
        );
        assert!(printed.contains("username = \"${clientid}\""), "{printed}");
        for path in [
            "/etc/gateway/passwd",
            "/etc/gateway/psk.txt",
            "/etc/gateway/server.pem",
            "/etc/gateway/server.key",
        ] {
            assert!(
                printed.contains(&format!("\"{path}\"")),
                "{path} in {printed}"
            );
        }
    }

    #[test]
    fn placeholders_alone_are_not_secrets() {
        for shown in ["", "${password}", "${clientid}${password}"] {
            assert!(only_placeholders(shown), "{shown}");
        }
        for masked in ["s3cret", "${clientid}-key", "x${password}", "${unclosed"] {
            assert!(!only_placeholders(masked), "{masked}");
        }
    }
}
