//! Feeds arbitrary text to the CoRE link-format parser (RFC 6690), as a registration's
//! object list or a discover answer would come. Parsing may fail but never panic; an error
//! points inside the text; every link read is a piece of the text, its target inside it,
//! and the links written out again, one after the other, read back as the same links.

#![no_main]

use libfuzzer_sys::fuzz_target;
use translations::link_format;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let links = match link_format::parse(text) {
        Ok(links) => links,
        Err(error) => {
            assert!(error.offset <= text.len(), "{error}");
            assert!(text.is_char_boundary(error.offset), "{error}");
            return;
        }
    };
    for link in &links {
        assert!(text.contains(link.text));
        assert!(link.text.contains(link.target));
        assert!(link.text.starts_with('<'));
    }
    let again = links.iter().map(|l| l.text).collect::<Vec<_>>().join(",");
    let reread = link_format::parse(&again)
        .unwrap_or_else(|error| panic!("our own joining does not parse: {error}"));
    assert_eq!(reread.len(), links.len());
    for (first, second) in links.iter().zip(&reread) {
        assert_eq!(first.target, second.target);
        assert_eq!(first.params, second.params);
    }
});
