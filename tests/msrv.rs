//! The stated minimum supported Rust version holds for what this machine can check without an
//! older toolchain: no dependency in the lock file asks for a newer Rust.
//!
//! Only one toolchain exists here, so the workspace is never compiled with the MSRV itself. What
//! is checked instead: this test (dependencies), and clippy's `incompatible_msrv` lint, which
//! fails `cargo clippy -- -D warnings` on any standard-library item stabilized after the MSRV.
//! Language features newer than the MSRV are caught by neither.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

/// `1.88` or `1.88.0` as comparable numbers.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().unwrap());
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

#[test]
fn no_dependency_needs_a_newer_rust_than_the_stated_msrv() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--all-features",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();

    let msrv = env!("CARGO_PKG_RUST_VERSION");
    assert_eq!(msrv, "1.88", "the MSRV the README states");
    let msrv = version(msrv);

    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let resolved: Vec<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    let mut declared = 0;
    let mut too_new = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        let id = package["id"].as_str().unwrap();
        if !resolved.contains(&id) {
            continue;
        }
        let Some(needs) = package["rust_version"].as_str() else {
            continue;
        };
        if members.contains(&id) {
            assert_eq!(version(needs), msrv, "{id} states the workspace MSRV");
            continue;
        }
        declared += 1;
        if version(needs) > msrv {
            let (name, at) = (package["name"].as_str(), package["version"].as_str());
            too_new.push(format!(
                "{} {} needs Rust {needs}",
                name.unwrap_or("?"),
                at.unwrap_or("?")
            ));
        }
    }
    assert!(
        declared > 50,
        "most dependencies declare a rust-version ({declared} did)"
    );
    assert!(
        too_new.is_empty(),
        "dependencies newer than the MSRV: {too_new:#?}"
    );
}
