//! Layering with figment and turning its errors into messages that name the key and its source.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use crate::{validate, Config};

const ENV_PREFIX: &str = "GATEWAY_";
const ENV_SEPARATOR: &str = "__";
const DEFAULTS_NAME: &str = "embedded defaults";
const TEMPLATE_NAME: &str = "defaults of the kind's default listener";
const STORAGE_SHORTHAND_NAME: &str = "the `storage = \"...\"` shorthand";

/// Loading failed: the file could not be read, or the layered values are not a valid config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, in key order for validation and figment order for parsing.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems, empty for [`ConfigError::Read`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(problems) => problems,
        }
    }
}

/// One thing wrong with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `mqtt.max_qos_allowed`; empty for a file that does not parse.
    pub key: String,
    /// A full sentence that names the key.
    pub message: String,
    /// Where the offending value came from: `file /etc/gw.toml`, `env GATEWAY_MQTT__X`, ...
    pub origin: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        Ok(())
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// A provider under a name of our choosing, so error origins read "embedded defaults" or the
/// real env var name instead of figment's generic labels.
struct Named<P> {
    inner: P,
    metadata: Metadata,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

fn defaults_provider() -> impl Provider {
    Named {
        inner: Toml::string(crate::DEFAULT_TOML),
        metadata: Metadata::named(DEFAULTS_NAME),
    }
}

fn env_provider() -> impl Provider {
    // Only nested names count: every schema key is at least two levels deep, and this keeps
    // variables like GATEWAY_CONFIG (read by the CLI) from failing as unknown keys while a
    // typo such as GATEWAY_MQT__X still does.
    let env = Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains(ENV_SEPARATOR))
        .split(ENV_SEPARATOR);
    Named {
        inner: env,
        metadata: Metadata::named("environment").interpolater(|_: &Profile, keys: &[&str]| {
            let upper: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!("{ENV_PREFIX}{}", upper.join(ENV_SEPARATOR))
        }),
    }
}

impl Config {
    /// Embedded defaults <- `file` (if given) <- `GATEWAY_*` env vars, extracted and validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_figment(&Config::figment(file)?)
    }

    /// The embedded defaults alone, validated: what a file without keys loads to.
    pub fn defaults() -> Result<Config, ConfigError> {
        Config::from_figment(&Figment::from(defaults_provider()))
    }

    /// Embedded defaults <- `toml`, no environment: for tests and `gateway config check`.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let figment = Figment::from(defaults_provider()).merge(Named {
            inner: Toml::string(toml),
            metadata: Metadata::named("the given TOML"),
        });
        Config::from_figment(&figment)
    }

    /// What is valid but unsafe to run with, each naming its keys: for `gateway config check`.
    pub fn warnings(&self) -> Vec<Problem> {
        validate::warnings(self)
            .into_iter()
            .map(|v| Problem {
                key: v.key,
                message: v.message,
                origin: None,
            })
            .collect()
    }

    /// The layers of [`Config::load`] before extraction, so the binary can merge CLI flags
    /// on top. Fails only if `file` is given and cannot be read.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(defaults_provider());
        if let Some(path) = file {
            // figment skips a missing file silently; a path the operator named must exist.
            std::fs::File::open(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment.merge(env_provider()))
    }

    /// Extracts and validates a figment built by [`Config::figment`] (plus any layers the
    /// caller added on top).
    pub fn from_figment(figment: &Figment) -> Result<Config, ConfigError> {
        let figment = with_storage_shorthand(&with_listener_templates(figment)?)?;
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(figment_problems(&figment, e)))?;
        let problems: Vec<Problem> = validate::check(&config)
            .into_iter()
            .map(|v| Problem {
                origin: origin_of(&figment, &v.key),
                key: v.key,
                message: v.message,
            })
            .collect();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// `storage = "disk"` (or `"memory"`) is short for a `[storage]` table with that backend
/// and every other storage setting at its default.
fn with_storage_shorthand(figment: &Figment) -> Result<Figment, ConfigError> {
    let Ok(Value::String(_, backend)) = figment.find_value("storage") else {
        return Ok(figment.clone());
    };
    let mut table = Figment::from(defaults_provider())
        .extract_inner::<Dict>("storage")
        .map_err(|e| ConfigError::Invalid(figment_problems(figment, e)))?;
    table.insert("backend".into(), Value::from(backend));
    Ok(figment.clone().merge(Named {
        inner: Serialized::default("storage", &table),
        metadata: Metadata::named(STORAGE_SHORTHAND_NAME),
    }))
}

/// Lets a listener added under a new name leave out every key but `bind`, taking the rest from
/// the embedded `default` listener of its table, so there is still one place that states defaults.
fn with_listener_templates(figment: &Figment) -> Result<Figment, ConfigError> {
    let mut out = figment.clone();
    for table in crate::ListenerKind::ALL.map(crate::ListenerKind::table) {
        let Ok(listeners) = figment.extract_inner::<Map<String, Value>>(table) else {
            // Not a table: extraction reports it with the key and source.
            continue;
        };
        let bad_names: Vec<Problem> = listeners
            .keys()
            .filter(|name| !validate::is_valid_listener_name(name))
            .map(|name| Problem {
                key: format!("{table}.{name}"),
                message: format!(
                    "{table}: invalid listener name {name:?}: use letters, digits, '_' and '-'"
                ),
                origin: None,
            })
            .collect();
        if !bad_names.is_empty() {
            return Err(ConfigError::Invalid(bad_names));
        }
        let mut template = Figment::from(defaults_provider())
            .extract_inner::<Dict>(&format!("{table}.default"))
            .map_err(|e| ConfigError::Invalid(figment_problems(figment, e)))?;
        template.remove("bind");
        for name in listeners.keys().filter(|name| *name != "default") {
            out = out.join(Named {
                inner: Serialized::default(&format!("{table}.{name}"), &template),
                metadata: Metadata::named(TEMPLATE_NAME),
            });
        }
    }
    Ok(out)
}

fn figment_problems(figment: &Figment, error: figment::Error) -> Vec<Problem> {
    error
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            let message = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    // figment already appends the field to the path; older versions did not.
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    format!(
                        "unknown key `{}` (expected {})",
                        path.join("."),
                        figment::error::OneOf(expected)
                    )
                }
                figment::error::Kind::MissingField(field) => {
                    if path.last().map(String::as_str) != Some(&**field) {
                        path.push(field.to_string());
                    }
                    format!("missing key `{}`", path.join("."))
                }
                figment::error::Kind::UnknownVariant(found, expected) => format!(
                    "{}: unknown value `{found}`, expected {}",
                    path.join("."),
                    figment::error::OneOf(expected)
                ),
                kind if path.is_empty() => kind.to_string().trim_end().to_owned(),
                kind => format!("{}: {kind}", path.join(".")),
            };
            let key = path.join(".");
            // The value's own source first: for an unknown key the error carries the metadata
            // of the enclosing table, which usually comes from the embedded defaults.
            let origin = origin_of(figment, &key).or_else(|| {
                e.metadata
                    .as_ref()
                    .map(|md| describe(md, e.profile.as_ref(), &path))
            });
            Problem {
                key,
                message,
                origin,
            }
        })
        .collect()
}

fn origin_of(figment: &Figment, key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let md = figment.find_metadata(key)?;
    let path: Vec<String> = key.split('.').map(str::to_owned).collect();
    Some(describe(md, Some(figment.profile()), &path))
}

fn describe(md: &Metadata, profile: Option<&Profile>, path: &[String]) -> String {
    match &md.source {
        Some(Source::File(file)) => format!("file {}", file.display()),
        _ if md.name == "environment" => {
            let keys: Vec<&str> = path.iter().map(String::as_str).collect();
            let profile = profile.cloned().unwrap_or_default();
            format!("env {}", md.interpolate(&profile, &keys))
        }
        _ => md.name.to_string(),
    }
}
