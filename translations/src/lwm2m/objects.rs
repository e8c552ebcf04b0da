//! Object definitions in the OMA registry's XML schema (LWM2M.xsd): which objects exist,
//! their names and the type of each resource. The project's definitions of the core
//! objects 0-7 and common IPSO objects are built in; `xml_dir` adds or replaces others.
//!
//! The files are read by an XML parser (roxmltree): comments, CDATA, character and the
//! predefined entities, attributes in any order, namespaces, CRLF and a byte order mark
//! are XML and read as such; anything that is not well-formed is refused with its file,
//! line and column. A document type declaration is refused outright, so no entity of a
//! file's own is ever expanded (billion laughs) and nothing outside the file is fetched.
//!
//! Limits, each refused naming the file: a file over `MAX_FILE_BYTES`, more XML nodes
//! than `MAX_NODES`, more than `MAX_FILES` files in `xml_dir`, a `.xml` that is not a
//! regular file (a FIFO would hold start-up). Resources are keyed by
//! their 16-bit id, so an object holds at most 65,536 of them, each once.
//!
//! An object id defined twice is refused when both definitions come from the operator
//! (two files of `xml_dir`, or one file twice), since which one a device would be typed
//! by would depend on file names; a file of `xml_dir` replacing a built-in definition is
//! what `xml_dir` is for.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path as FsPath;
use std::sync::Arc;

use roxmltree::{Document, Node, ParsingOptions};

use super::{Path, ResourceType, TypeLookup};

/// The largest definition file read from `xml_dir`. The OMA registry's largest objects
/// are some tens of kilobytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// XML nodes (elements, text, comments) a definition may hold: a 1 MiB file of the
/// smallest resources stays under it, and a file of empty elements is stopped early.
pub const MAX_NODES: u32 = 200_000;

/// The `*.xml` files `xml_dir` may hold.
pub const MAX_FILES: usize = 10_000;

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
    /// Not well-formed XML, or not a definition: where, as a text editor counts (from 1).
    #[error("{file}:{line}:{column}: {why}")]
    Invalid {
        file: String,
        line: u32,
        column: u32,
        why: String,
    },
    #[error("{file}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { file: String },
    #[error("{file}: not a regular file")]
    NotAFile { file: String },
    #[error("{dir}: more than {MAX_FILES} definition files")]
    TooManyFiles { dir: String },
    #[error("{file}: object {id} is already defined by {first}")]
    Duplicate {
        file: String,
        id: u16,
        first: String,
    },
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
        let mut files = Vec::new();
        for entry in std::fs::read_dir(xml_dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|ext| ext == "xml") {
                if files.len() == MAX_FILES {
                    return Err(DefinitionError::TooManyFiles {
                        dir: xml_dir.to_owned(),
                    });
                }
                files.push(path);
            }
        }
        files.sort();
        let mut defined_by: HashMap<u16, String> = HashMap::new();
        for file in files {
            let name = display(&file);
            let text = read_bounded(&file, &name)?;
            for definition in parse_file(&name, &text)? {
                if let Some(first) = defined_by.insert(definition.id, name.clone()) {
                    return Err(DefinitionError::Duplicate {
                        file: name,
                        id: definition.id,
                        first,
                    });
                }
                registry.insert(definition);
            }
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

    /// Adds the definitions of one file's text, replacing those of the same ids; the file
    /// names the errors.
    pub fn add(&mut self, file: &str, xml: &str) -> Result<(), DefinitionError> {
        for definition in parse_file(file, xml)? {
            self.insert(definition);
        }
        Ok(())
    }

    fn insert(&mut self, definition: ObjectDefinition) {
        self.objects.insert(definition.id, Arc::new(definition));
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

/// A file's text, refused beyond `MAX_FILE_BYTES` however large it claims or turns out to
/// be (it may grow while read), and as text only in UTF-8, the encoding the registry uses.
fn read_bounded(file: &FsPath, name: &str) -> Result<String, DefinitionError> {
    let io = |source| DefinitionError::Io {
        dir: name.to_owned(),
        source,
    };
    // A FIFO or a device under a `.xml` name would hold start-up on its open or its read.
    if !std::fs::metadata(file).map_err(io)?.is_file() {
        return Err(DefinitionError::NotAFile {
            file: name.to_owned(),
        });
    }
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .map_err(io)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(DefinitionError::TooLarge {
            file: name.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|error| {
        let valid = error.utf8_error().valid_up_to();
        let before = error.as_bytes().get(..valid).unwrap_or_default();
        let at = position(&String::from_utf8_lossy(before), valid);
        DefinitionError::Invalid {
            file: name.to_owned(),
            line: at.row,
            column: at.col,
            why: "not UTF-8".to_owned(),
        }
    })
}

/// Line and column (from 1, in characters) of a byte offset of `text`.
fn position(text: &str, offset: usize) -> roxmltree::TextPos {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    roxmltree::TextPos::new(
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

/// Every `<Object>` of one file, or the first thing wrong with it.
fn parse_file(file: &str, xml: &str) -> Result<Vec<ObjectDefinition>, DefinitionError> {
    let invalid = |pos: roxmltree::TextPos, why: String| DefinitionError::Invalid {
        file: file.to_owned(),
        line: pos.row,
        column: pos.col,
        why,
    };
    // A byte order mark is no XML; editors on some systems write one.
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let document = Document::parse_with_options(xml, options).map_err(|error| match error {
        roxmltree::Error::NodesLimitReached => {
            invalid(error.pos(), format!("more than {MAX_NODES} XML nodes"))
        }
        // roxmltree stops at a declaration without saying where it is.
        roxmltree::Error::DtdDetected => invalid(
            position(xml, xml.find("<!DOCTYPE").unwrap_or_default()),
            "a document type declaration (<!DOCTYPE>) is not taken".to_owned(),
        ),
        // roxmltree ends its message with the position, which the error shows first.
        error => {
            let shown = error.to_string();
            let why = shown
                .strip_suffix(&format!(" at {}", error.pos()))
                .unwrap_or(&shown);
            invalid(error.pos(), why.to_owned())
        }
    })?;
    let at = |node: Node, why: String| invalid(document.text_pos_at(node.range().start), why);
    let root = document.root_element();
    if root.tag_name().name() != "LWM2M" {
        return Err(at(
            root,
            format!("<{}> where <LWM2M> was expected", root.tag_name().name()),
        ));
    }
    let mut definitions: Vec<ObjectDefinition> = Vec::new();
    for object in root.children().filter(|n| is(n, "Object")) {
        let definition = parse_object(object).map_err(|(node, why)| at(node, why))?;
        if definitions.iter().any(|d| d.id == definition.id) {
            return Err(at(
                object,
                format!("object {} defined twice", definition.id),
            ));
        }
        definitions.push(definition);
    }
    if definitions.is_empty() {
        return Err(at(root, "no <Object>".to_owned()));
    }
    Ok(definitions)
}

type Refusal<'a, 'i> = (Node<'a, 'i>, String);

fn is(node: &Node, name: &str) -> bool {
    node.is_element() && node.tag_name().name() == name
}

/// The one child element `name` of `parent`, if any; twice is an error, since which one
/// counts would be a guess.
fn child<'a, 'i>(
    parent: Node<'a, 'i>,
    name: &str,
) -> Result<Option<Node<'a, 'i>>, Refusal<'a, 'i>> {
    let mut found = parent.children().filter(|n| is(n, name));
    let first = found.next();
    match found.next() {
        Some(second) => Err((second, format!("<{name}> given twice"))),
        None => Ok(first),
    }
}

/// An element's text: its text and CDATA children joined (a comment may split them),
/// trimmed; nested elements are not text.
fn text(node: Node) -> String {
    let joined: String = node
        .children()
        .filter(Node::is_text)
        .filter_map(|n| n.text())
        .collect();
    joined.trim().to_owned()
}

fn child_text<'a, 'i>(parent: Node<'a, 'i>, name: &str) -> Result<Option<String>, Refusal<'a, 'i>> {
    Ok(child(parent, name)?.map(text))
}

fn multiple<'a, 'i>(parent: Node<'a, 'i>) -> Result<bool, Refusal<'a, 'i>> {
    Ok(child_text(parent, "MultipleInstances")?.is_some_and(|m| m == "Multiple"))
}

fn parse_object<'a, 'i>(object: Node<'a, 'i>) -> Result<ObjectDefinition, Refusal<'a, 'i>> {
    let id_node = child(object, "ObjectID")?.ok_or((object, "no <ObjectID>".to_owned()))?;
    let id = text(id_node)
        .parse::<u16>()
        .map_err(|_| (id_node, "<ObjectID> is not 0..=65535".to_owned()))?;
    let name = child_text(object, "Name")?.unwrap_or_default();
    let multiple = multiple(object)?;
    let mut resources = HashMap::new();
    if let Some(list) = child(object, "Resources")? {
        for item in list.children().filter(|n| is(n, "Item")) {
            let resource = parse_item(item)?;
            if resources.contains_key(&resource.id) {
                return Err((item, format!("resource {} defined twice", resource.id)));
            }
            resources.insert(resource.id, resource);
        }
    }
    Ok(ObjectDefinition {
        id,
        name,
        multiple,
        resources,
    })
}

fn parse_item<'a, 'i>(item: Node<'a, 'i>) -> Result<Resource, Refusal<'a, 'i>> {
    let id_attr = item
        .attribute("ID")
        .ok_or((item, "<Item> without ID".to_owned()))?;
    let id = id_attr
        .trim()
        .parse::<u16>()
        .map_err(|_| (item, format!("<Item ID=\"{id_attr}\"> is not 0..=65535")))?;
    let type_name = child_text(item, "Type")?.unwrap_or_default();
    let kind = ResourceType::from_name(&type_name)
        .ok_or_else(|| (item, format!("resource {id}: unknown type {type_name:?}")))?;
    Ok(Resource {
        id,
        name: child_text(item, "Name")?.unwrap_or_default(),
        operations: child_text(item, "Operations")?.unwrap_or_default(),
        multiple: multiple(item)?,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(xml: &str) -> Result<ObjectDefinition, DefinitionError> {
        let mut definitions = parse_file("t.xml", xml)?;
        assert_eq!(definitions.len(), 1);
        Ok(definitions.remove(0))
    }

    fn refusal(xml: &str) -> (u32, u32, String) {
        match parse_file("t.xml", xml) {
            Err(DefinitionError::Invalid {
                file,
                line,
                column,
                why,
            }) => {
                assert_eq!(file, "t.xml");
                (line, column, why)
            }
            other => panic!("{other:?}"),
        }
    }

    /// A scratch directory of the test's own, emptied.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("objects-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const SMALL: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<LWM2M xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="http://openmobilealliance.org/tech/profiles/LWM2M.xsd">
  <Object ObjectType="MODefinition">
    <Name>Small</Name>
    <ObjectID>9000</ObjectID>
    <MultipleInstances>Multiple</MultipleInstances>
    <Resources>
      <Item ID="1"><Name>Level</Name><Operations>RW</Operations>
        <MultipleInstances>Single</MultipleInstances><Type>Integer</Type></Item>
    </Resources>
  </Object>
</LWM2M>
"#;

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
        assert_eq!(device.resources.len(), 23);
        assert_eq!(device.resources[&13].kind, ResourceType::Time);
        assert!(device.resources[&6].multiple);
        assert_eq!(device.resources[&4].kind, ResourceType::None);
        assert_eq!(device.resources[&4].operations, "E");
        assert_eq!(device.resources[&0].name, "Manufacturer");
        let path: Path = "/3303/0/5700".parse().unwrap();
        assert_eq!(registry.resource_type(&path), Some(ResourceType::Float));
        let path: Path = "/3/0/7/1".parse().unwrap();
        assert_eq!(registry.resource_type(&path), Some(ResourceType::Integer));
        let path: Path = "/9999/0/1".parse().unwrap();
        assert_eq!(registry.resource_type(&path), None);
    }

    #[test]
    fn what_xml_allows_is_read_as_xml() {
        let plain = one(SMALL).unwrap();
        assert_eq!(plain.id, 9000);
        assert!(plain.multiple);
        let level = &plain.resources[&1];
        assert_eq!(
            (level.name.as_str(), level.operations.as_str(), level.kind),
            ("Level", "RW", ResourceType::Integer)
        );
        // Comments inside elements, CDATA, entities, attributes in another order and
        // spacing, a namespace prefix, CRLF and a byte order mark: the same definition.
        let tricky = "\u{feff}<?xml version=\"1.0\"?>\r\n\
            <o:LWM2M xmlns:o=\"urn:example\" \r\n xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\r\n\
            <!-- <Object><ObjectID>1</ObjectID></Object> -->\r\n\
            <o:Object>\r\n\
              <o:Name>Sm<!-- a comment -->all</o:Name>\r\n\
              <o:ObjectID> 90<!-- split -->00 </o:ObjectID>\r\n\
              <o:MultipleInstances><![CDATA[Multiple]]></o:MultipleInstances>\r\n\
              <o:Description1><![CDATA[</Object> & <Item ID=\"7\">]]></o:Description1>\r\n\
              <o:Resources>\r\n\
                <o:Item  Mandatory = 'x'\r\n ID = '1' >\r\n\
                  <o:Type>&#x49;nteger</o:Type><o:Operations>R&#87;</o:Operations>\r\n\
                  <o:Name>Level</o:Name>\r\n\
                  <o:Description>a &lt; b &amp;&amp; c &gt; d: &quot;&apos;</o:Description>\r\n\
                </o:Item>\r\n\
              </o:Resources>\r\n\
            </o:Object>\r\n\
            </o:LWM2M>\r\n";
        assert_eq!(one(tricky).unwrap(), plain);
        // An entity in a name is its character.
        let named = SMALL.replace("<Name>Level</Name>", "<Name>Level &amp; Trend</Name>");
        assert_eq!(one(&named).unwrap().resources[&1].name, "Level & Trend");
    }

    #[test]
    fn what_is_not_a_definition_is_refused_with_its_line_and_column() {
        let (line, _, why) = refusal(&SMALL.replace("</Item>", "</Itme>"));
        assert_eq!(line, 9, "{why}");
        assert_eq!(refusal("<LWM2M></LWM2M>"), (1, 1, "no <Object>".into()));
        let (line, column, why) = refusal("<Object><ObjectID>9</ObjectID></Object>");
        assert_eq!((line, column), (1, 1));
        assert!(why.contains("<LWM2M> was expected"), "{why}");
        let (line, _, why) = refusal(&SMALL.replace(">9000<", ">70000<"));
        assert_eq!((line, why.as_str()), (5, "<ObjectID> is not 0..=65535"));
        let (line, _, why) = refusal(&SMALL.replace("<Type>Integer", "<Type>Blob"));
        assert_eq!(line, 8);
        assert!(why.contains("unknown type \"Blob\""), "{why}");
        let (_, _, why) = refusal(&SMALL.replace("Item ID=\"1\"", "Item"));
        assert_eq!(why, "<Item> without ID");
        let (_, _, why) =
            refusal(&SMALL.replace("<Name>Small</Name>", "<Name>a</Name><Name>b</Name>"));
        assert_eq!(why, "<Name> given twice");
        let twice = SMALL.replace(
            "</Resources>",
            "<Item ID=\"1\"><Type>String</Type></Item></Resources>",
        );
        assert_eq!(refusal(&twice).2, "resource 1 defined twice");
        let (_, _, why) = refusal(&SMALL.replace("</LWM2M>", ""));
        assert_eq!(why, "the root node was opened but never closed");
        assert_eq!(refusal("").2, "the document does not have a root node");
        // An undeclared entity is no text of ours.
        assert!(refusal(&SMALL.replace("Small", "&nbsp;"))
            .2
            .contains("unknown entity"));
        let shown = DefinitionError::Invalid {
            file: "dir/t.xml".into(),
            line: 3,
            column: 7,
            why: "x".into(),
        };
        assert_eq!(shown.to_string(), "dir/t.xml:3:7: x");
    }

    #[test]
    fn entities_of_a_document_type_are_refused_not_expanded() {
        let laughs = format!(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE LWM2M [\n\
             <!ENTITY lol \"lol\">\n{}]>\n\
             <LWM2M><Object><Name>&lol9;</Name><ObjectID>1</ObjectID></Object></LWM2M>",
            (1..=9)
                .map(|n| format!(
                    "<!ENTITY lol{n} \"{}\">\n",
                    format!(
                        "&lol{};",
                        if n == 1 {
                            String::new()
                        } else {
                            (n - 1).to_string()
                        }
                    )
                    .repeat(10)
                ))
                .collect::<String>()
        );
        let started = std::time::Instant::now();
        let (line, _, why) = refusal(&laughs);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(line, 2, "{why}");
        assert!(why.contains("document type declaration"), "{why}");
        // An external entity would be read from elsewhere: refused the same way.
        let external = "<!DOCTYPE LWM2M [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n\
            <LWM2M><Object><Name>&x;</Name><ObjectID>1</ObjectID></Object></LWM2M>";
        assert!(refusal(external).2.contains("document type declaration"));
    }

    #[test]
    fn absurd_definitions_are_bounded() {
        // Deep nesting inside an object: read without recursion, ignored.
        let depth = 100_000;
        let deep = SMALL.replace(
            "<Resources>",
            &format!("{}{}<Resources>", "<x>".repeat(depth), "</x>".repeat(depth)),
        );
        assert!(deep.len() < MAX_FILE_BYTES as usize);
        assert_eq!(one(&deep).unwrap().resources.len(), 1);
        // As many resources as a file under the size limit holds: each is kept.
        let items: String = (2..20_002u32)
            .map(|id| format!("<Item ID=\"{id}\"><Type>Integer</Type></Item>"))
            .collect();
        let many = SMALL.replace("<Resources>", &format!("<Resources>{items}"));
        assert!(many.len() < MAX_FILE_BYTES as usize);
        let started = std::time::Instant::now();
        assert_eq!(one(&many).unwrap().resources.len(), 20_001);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Nodes past the limit are refused before they are all made.
        let nodes = SMALL.replace(
            "<Resources>",
            &format!("<Resources>{}", "<a/>".repeat(MAX_NODES as usize)),
        );
        assert!(refusal(&nodes).2.contains("XML nodes"));
    }

    #[test]
    fn xml_dir_adds_and_replaces_and_is_refused_by_name() {
        let dir = scratch("load");
        std::fs::write(dir.join("9000.xml"), SMALL).unwrap();
        let replaced = std::fs::read_to_string("src/lwm2m/objects/3.xml")
            .unwrap()
            .replace("<Name>Device</Name>", "<Name>My Device</Name>");
        std::fs::write(dir.join("3.xml"), replaced).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a definition").unwrap();
        let registry = ObjectRegistry::load(dir.to_str().unwrap()).unwrap();
        assert_eq!(registry.len(), BUILT_IN.len() + 1);
        assert_eq!(registry.object(3).unwrap().name, "My Device");
        assert_eq!(registry.object(9000).unwrap().name, "Small");

        // The same object in two files of the operator: which would win is a guess.
        std::fs::write(dir.join("copy.xml"), SMALL).unwrap();
        let error = ObjectRegistry::load(dir.to_str().unwrap()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: object 9000 is already defined by {}",
                dir.join("copy.xml").display(),
                dir.join("9000.xml").display()
            )
        );
        std::fs::remove_file(dir.join("copy.xml")).unwrap();

        // A broken file is named with its line.
        std::fs::write(dir.join("broken.xml"), SMALL.replace("</Item>", "")).unwrap();
        let error = ObjectRegistry::load(dir.to_str().unwrap()).unwrap_err();
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!("{}:10:5: ", dir.join("broken.xml").display())),
            "{shown}"
        );
        std::fs::remove_file(dir.join("broken.xml")).unwrap();

        // Not UTF-8 (here Latin-1), named where it stops being so.
        let mut latin1 = SMALL.replace("Small", "Sm").into_bytes();
        let at = latin1.windows(2).position(|w| w == b"Sm").unwrap() + 2;
        latin1.insert(at, 0xe9);
        std::fs::write(dir.join("latin1.xml"), latin1).unwrap();
        let shown = ObjectRegistry::load(dir.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            shown,
            format!("{}:4:13: not UTF-8", dir.join("latin1.xml").display())
        );
        std::fs::remove_file(dir.join("latin1.xml")).unwrap();

        // Past the size limit, refused without reading it all.
        let huge = SMALL.replace(
            "<Resources>",
            &format!("<!--{}--><Resources>", " ".repeat(MAX_FILE_BYTES as usize)),
        );
        std::fs::write(dir.join("huge.xml"), huge).unwrap();
        let error = ObjectRegistry::load(dir.to_str().unwrap()).unwrap_err();
        assert!(matches!(error, DefinitionError::TooLarge { .. }), "{error}");
        assert!(error
            .to_string()
            .ends_with("huge.xml: larger than 1048576 bytes"));
        std::fs::remove_file(dir.join("huge.xml")).unwrap();

        // A FIFO is not opened (the open would wait for a writer), nor a directory read.
        let status = std::process::Command::new("mkfifo")
            .arg(dir.join("fifo.xml"))
            .status()
            .unwrap();
        assert!(status.success());
        let error = ObjectRegistry::load(dir.to_str().unwrap()).unwrap_err();
        assert!(
            error.to_string().ends_with("fifo.xml: not a regular file"),
            "{error}"
        );
        std::fs::remove_file(dir.join("fifo.xml")).unwrap();
        std::fs::create_dir(dir.join("dir.xml")).unwrap();
        let error = ObjectRegistry::load(dir.to_str().unwrap()).unwrap_err();
        assert!(
            error.to_string().ends_with("dir.xml: not a regular file"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let error = ObjectRegistry::load("/nonexistent-xml-dir").unwrap_err();
        assert_eq!(error.to_string(), "cannot read /nonexistent-xml-dir");
    }
}
