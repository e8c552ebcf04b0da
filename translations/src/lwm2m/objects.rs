//! Object definitions in the OMA registry's XML schema (LWM2M.xsd): which objects exist,
//! their names and the type of each resource. The project's definitions of the core
//! objects 0-7 and common IPSO objects are built in; `xml_dir` adds or replaces others.

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::Arc;

use super::{Path, ResourceType, TypeLookup};

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: u16,
    pub name: String,
    pub operations: String,
    pub multiple: bool,
    pub kind: ResourceType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectDefinition {
    pub id: u16,
    pub name: String,
    pub multiple: bool,
    pub resources: HashMap<u16, Resource>,
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{file}: {why}")]
    Invalid { file: String, why: String },
    // The cause follows as the source, so a chain of errors does not say it twice.
    #[error("cannot read {dir}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// The definitions shipped with the gateway (translations/src/lwm2m/objects/).
const BUILT_IN: &[(&str, &str)] = &[
    ("0.xml", include_str!("objects/0.xml")),
    ("1.xml", include_str!("objects/1.xml")),
    ("2.xml", include_str!("objects/2.xml")),
    ("3.xml", include_str!("objects/3.xml")),
    ("4.xml", include_str!("objects/4.xml")),
    ("5.xml", include_str!("objects/5.xml")),
    ("6.xml", include_str!("objects/6.xml")),
    ("7.xml", include_str!("objects/7.xml")),
    ("3301.xml", include_str!("objects/3301.xml")),
    ("3303.xml", include_str!("objects/3303.xml")),
    ("3304.xml", include_str!("objects/3304.xml")),
    ("3311.xml", include_str!("objects/3311.xml")),
];

/// Object id → definition, shared by every device.
#[derive(Debug, Clone, Default)]
pub struct ObjectRegistry {
    objects: HashMap<u16, Arc<ObjectDefinition>>,
}

impl ObjectRegistry {
    /// The built-in definitions, then every `*.xml` of `xml_dir` (when not empty) over them.
    pub fn load(xml_dir: &str) -> Result<ObjectRegistry, DefinitionError> {
        let mut registry = ObjectRegistry::built_in();
        if xml_dir.is_empty() {
            return Ok(registry);
        }
        let io = |source| DefinitionError::Io {
            dir: xml_dir.to_owned(),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(xml_dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "xml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(io)?;
            registry.add(&display(&file), &text)?;
        }
        Ok(registry)
    }

    pub fn built_in() -> ObjectRegistry {
        let mut registry = ObjectRegistry::default();
        for (name, text) in BUILT_IN {
            // The shipped files are checked by a test; a broken one is skipped, not fatal.
            if let Err(error) = registry.add(name, text) {
                tracing::error!(%error, "built-in object definition skipped");
            }
        }
        registry
    }

    pub fn add(&mut self, file: &str, xml: &str) -> Result<(), DefinitionError> {
        let definition = parse(xml).map_err(|why| DefinitionError::Invalid {
            file: file.to_owned(),
            why,
        })?;
        self.objects.insert(definition.id, Arc::new(definition));
        Ok(())
    }

    pub fn object(&self, id: u16) -> Option<&ObjectDefinition> {
        self.objects.get(&id).map(|object| &**object)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

impl TypeLookup for ObjectRegistry {
    fn resource_type(&self, path: &Path) -> Option<ResourceType> {
        let object = self.object(path.object()?)?;
        object.resources.get(&path.resource()?).map(|r| r.kind)
    }
}

fn display(path: &FsPath) -> String {
    path.display().to_string()
}

/// The text of the first `<tag ...>...</tag>` in `xml`, attributes skipped.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut from = 0;
    loop {
        let at = from + xml.get(from..)?.find(&open)? + open.len();
        let after = xml.get(at..)?;
        if after.starts_with('>') || after.starts_with(char::is_whitespace) {
            let start = at + after.find('>')? + 1;
            let end = start + xml.get(start..)?.find(&close)?;
            return xml.get(start..end);
        }
        from = at;
    }
}

fn unescape(text: &str) -> String {
    text.trim()
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn parse(xml: &str) -> Result<ObjectDefinition, String> {
    let object = element(xml, "Object").ok_or("no <Object>")?;
    // Object-level fields come before <Resources>; resources have fields of the same names.
    let (header, resources) = match object.find("<Resources>") {
        Some(at) => object.split_at(at),
        None => (object, ""),
    };
    let id = element(header, "ObjectID")
        .ok_or("no <ObjectID>")?
        .trim()
        .parse::<u16>()
        .map_err(|_| "<ObjectID> is not 0..=65535")?;
    let name = unescape(element(header, "Name").unwrap_or_default());
    let multiple = element(header, "MultipleInstances").is_some_and(|m| m.trim() == "Multiple");
    let mut parsed = HashMap::new();
    let mut rest = resources;
    while let Some(start) = rest.find("<Item ") {
        let item = rest.get(start..).unwrap_or_default();
        let end = item.find("</Item>").ok_or("unterminated <Item>")?;
        let body = item.get(..end).unwrap_or_default();
        rest = item.get(end..).unwrap_or_default();
        let id_attr = body
            .split_once("ID=\"")
            .and_then(|(_, after)| after.split_once('"'))
            .map(|(id, _)| id)
            .ok_or("<Item> without ID")?;
        let rid = id_attr
            .parse::<u16>()
            .map_err(|_| format!("<Item ID=\"{id_attr}\"> is not 0..=65535"))?;
        let type_name = element(body, "Type").unwrap_or_default();
        let kind = ResourceType::from_name(type_name)
            .ok_or_else(|| format!("resource {rid}: unknown type {type_name:?}"))?;
        parsed.insert(
            rid,
            Resource {
                id: rid,
                name: unescape(element(body, "Name").unwrap_or_default()),
                operations: element(body, "Operations")
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                multiple: element(body, "MultipleInstances")
                    .is_some_and(|m| m.trim() == "Multiple"),
                kind,
            },
        );
    }
    Ok(ObjectDefinition {
        id,
        name,
        multiple,
        resources: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_definition_parses() {
        let mut registry = ObjectRegistry::default();
        for (name, text) in BUILT_IN {
            registry.add(name, text).unwrap();
        }
        assert_eq!(registry.len(), BUILT_IN.len());
        let device = registry.object(3).unwrap();
        assert_eq!(device.name, "Device");
        assert!(!device.multiple);
        assert_eq!(device.resources[&13].kind, ResourceType::Time);
        assert!(device.resources[&6].multiple);
        assert_eq!(device.resources[&4].kind, ResourceType::None);
        let path: Path = "/3303/0/5700".parse().unwrap();
        assert_eq!(registry.resource_type(&path), Some(ResourceType::Float));
        let path: Path = "/3/0/7/1".parse().unwrap();
        assert_eq!(registry.resource_type(&path), Some(ResourceType::Integer));
        let path: Path = "/9999/0/1".parse().unwrap();
        assert_eq!(registry.resource_type(&path), None);
    }

    #[test]
    fn broken_definitions_are_errors() {
        let mut registry = ObjectRegistry::default();
        assert!(registry.add("x", "<LWM2M></LWM2M>").is_err());
        assert!(registry
            .add("x", "<Object><ObjectID>70000</ObjectID></Object>")
            .is_err());
        let bad_type = "<Object><ObjectID>9</ObjectID><Resources><Item ID=\"1\"><Type>Blob</Type></Item></Resources></Object>";
        assert!(registry.add("x", bad_type).is_err());
    }
}
