//! specs/reports: the examples parse and validate with the shared Rust types, and each schema names
//! exactly the fields the types serialise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use conrdma_api::report::{NodeReport, UsageBatch};
use serde_json::Value;

fn spec(rel: &str) -> Value {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../specs/reports")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn node_report_example_and_schema_match_the_type() {
    let example = spec("examples/node-report.json");
    let r: NodeReport = serde_json::from_value(example.clone()).unwrap();
    r.validate().unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        example,
        "round trip is lossless"
    );
    let schema = spec("node-report.schema.json");
    let typed = serde_json::to_value(&r).unwrap();
    for (obj, def) in [
        (&typed, &schema),
        (&typed["pools"][0], &schema["$defs"]["pool"]),
        (&typed["pools"][0]["pfs"][0], &schema["$defs"]["pf"]),
    ] {
        assert_eq!(keys(obj), keys(&def["properties"]));
        assert_eq!(keys(obj), strings(&def["required"]));
        assert_eq!(def["additionalProperties"], false);
    }
}

#[test]
fn usage_example_and_schema_match_the_type() {
    let example = spec("examples/usage-reports.json");
    let b: UsageBatch = serde_json::from_value(example.clone()).unwrap();
    b.validate().unwrap();
    assert!(b.reports[1].is_final);
    let schema = spec("usage-reports.schema.json");
    let typed = serde_json::to_value(&b).unwrap();
    assert_eq!(keys(&typed), keys(&schema["properties"]));
    let report = &schema["$defs"]["report"];
    assert_eq!(keys(&typed["reports"][0]), keys(&report["properties"]));
    let mut required = strings(&report["required"]);
    required.insert("final".into()); // optional on input, always written
    assert_eq!(keys(&typed["reports"][0]), required);
    assert_eq!(
        keys(&typed["reports"][0]["pod"]),
        keys(&report["properties"]["pod"]["properties"])
    );
    // "final" may be left out.
    let mut v = example;
    v["reports"][0].as_object_mut().unwrap().remove("final");
    let b: UsageBatch = serde_json::from_value(v).unwrap();
    assert!(!b.reports[0].is_final);
}
