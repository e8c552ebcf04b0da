//! Feeds arbitrary text to the object definition reader, as a file of `xml_dir` would
//! come. Reading may fail but never panic; an error names the file and a line and column
//! from 1; every definition read keys each resource by its own id.

#![no_main]

use libfuzzer_sys::fuzz_target;
use translations::lwm2m::objects::{DefinitionError, ObjectRegistry};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut registry = ObjectRegistry::default();
    match registry.add("fuzz.xml", text) {
        Ok(()) => {
            assert!(!registry.is_empty());
            for id in 0..=u16::MAX {
                if let Some(object) = registry.object(id) {
                    assert_eq!(object.id, id);
                    for (key, resource) in &object.resources {
                        assert_eq!(*key, resource.id);
                    }
                }
            }
        }
        Err(DefinitionError::Invalid {
            file, line, column, ..
        }) => {
            assert_eq!(file, "fuzz.xml");
            assert!(line >= 1 && column >= 1);
        }
        Err(error) => panic!("a text added is neither read nor invalid: {error}"),
    }
});
