//! `docs/operations.md` documents exactly the configuration keys the server accepts: every key
//! of [`drawbridge_server::config::keys::KEYS`] has one row in its reference table, and every
//! row names an accepted key.

use std::collections::BTreeSet;

use drawbridge_server::config::keys::KEYS;

#[test]
fn operations_guide_lists_every_config_key_once() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let text = std::fs::read_to_string(&path).expect("docs/operations.md exists");
    let section = text
        .split("## Configuration reference")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Configuration reference section");
    let mut documented = Vec::new();
    for line in section.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let key = rest.split('`').next().unwrap_or_default();
        let status = line.rsplit('|').nth(1).unwrap_or_default().trim();
        assert!(
            ["applied", "stored", "accepted", "n/a"]
                .iter()
                .any(|s| status.starts_with(s)),
            "{key}: status {status:?} is not applied/stored/accepted/n/a"
        );
        documented.push(key.to_owned());
    }
    let unique: BTreeSet<&str> = documented.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), documented.len(), "a key is documented twice");
    let accepted: BTreeSet<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    let missing: Vec<_> = accepted.difference(&unique).collect();
    let unknown: Vec<_> = unique.difference(&accepted).collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/operations.md: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/operations.md lists unknown keys: {unknown:?}"
    );
}
