//! The README's configuration reference is the embedded default file itself, and every other
//! TOML example in it loads, so neither can drift from the schema.

#![allow(clippy::expect_used, clippy::panic)]

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md next to the workspace")
}

#[test]
fn readme_carries_the_default_configuration_verbatim() {
    assert!(
        readme().contains(gateway_config::DEFAULT_TOML),
        "README.md must contain config/default.toml verbatim in its configuration reference"
    );
}

#[test]
fn every_toml_example_in_the_readme_loads() {
    let readme = readme();
    let examples: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|block| block.split_once("\n```").map(|(toml, _)| toml))
        .filter(|toml| !gateway_config::DEFAULT_TOML.starts_with(toml.trim_start()))
        .collect();
    assert!(
        !examples.is_empty(),
        "the README shows example configurations"
    );
    for example in examples {
        if let Err(error) = gateway_config::Config::from_toml_str(example) {
            panic!("README example does not load:\n{example}\n-> {error}");
        }
    }
}
