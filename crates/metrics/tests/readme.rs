//! The README's Metrics table is the operators' contract: every metric the
//! server can expose is listed there with its labels and type, and nothing
//! else is.

use std::collections::BTreeSet;

use pixpool_metrics::Family;

/// (name, sorted label names, type cell) of each series the README's Metrics
/// table lists, e.g. `pixpool_jobs_total{outcome}` or `…{route="upload"}`.
fn documented() -> Vec<(String, Vec<String>, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md beside the workspace");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("a Metrics section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut out = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (series, kind) = (cells[1], cells[2]);
        for span in series.split('`').skip(1).step_by(2) {
            let (name, labels) = match span.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (span, ""),
            };
            let mut keys: Vec<String> = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|l| l.split('=').next().unwrap_or(l).to_string())
                .collect();
            keys.sort();
            out.push((name.to_string(), keys, kind.to_string()));
        }
    }
    out
}

#[test]
fn every_family_is_in_the_readme_with_its_labels_and_type_and_nothing_else_is() {
    let documented = documented();
    for family in Family::ALL {
        let mut keys: Vec<String> = family.label_names().iter().map(|k| k.to_string()).collect();
        keys.sort();
        let row = documented
            .iter()
            .find(|(name, _, _)| name == family.name())
            .unwrap_or_else(|| panic!("{} is not in the README's Metrics table", family.name()));
        assert_eq!(row.1, keys, "labels of {} in the README", family.name());
        assert!(
            row.2.starts_with(family.kind().as_str()),
            "type of {} in the README: {}",
            family.name(),
            row.2
        );
    }
    let known: BTreeSet<&str> = Family::ALL.iter().map(|f| f.name()).collect();
    for (name, _, _) in &documented {
        assert!(
            known.contains(name.as_str()),
            "the README lists {name}, which the server never exposes"
        );
    }
}
