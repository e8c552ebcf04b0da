//! The README's configuration reference is the embedded default file itself, so the two
//! cannot drift apart.

#[test]
fn readme_carries_the_default_configuration_verbatim() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .unwrap_or_default();
    assert!(
        readme.contains(gateway_config::DEFAULT_TOML),
        "README.md must contain config/default.toml verbatim in its configuration reference"
    );
}
