//! Tidy checks that run with the tests: every Rust file opens with a `//!` doc, the
//! pure crates depend on nothing that does IO, fronts depend on no other front (nor on the
//! local engine), and ARCHITECTURE.md names every crate.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(missing.is_empty(), "files without a //! doc: {missing:?}");
}

/// The `[dependencies]` section of a crate's manifest.
fn dependencies(krate: &str) -> String {
    let manifest = std::fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml"))
        .expect("manifest");
    manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap_or("")
        .split("\n[")
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn pure_crates_do_no_io() {
    for krate in [
        "querygate-core",
        "querygate-sql",
        "querygate-policy",
        "querygate-mask",
    ] {
        let deps = dependencies(krate);
        for io in ["tokio", "reqwest", "rusqlite", "axum", "hyper", "std::fs"] {
            assert!(
                !deps.contains(io),
                "{krate} must stay pure but depends on {io}"
            );
        }
    }
}

#[test]
fn architecture_names_every_crate() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    for entry in std::fs::read_dir(root().join("crates"))
        .expect("crates")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            arch.contains(&format!("`{name}`")),
            "ARCHITECTURE.md does not name `{name}`"
        );
    }
}

/// Fronts (the crates with a `routes.rs`) are peers: each reaches the rest through the
/// pipeline, never through another front, and none takes the local engine (only the binary
/// does, behind its `local` feature).
#[test]
fn fronts_depend_on_no_front() {
    let fronts: Vec<String> = std::fs::read_dir(root().join("crates"))
        .expect("crates")
        .flatten()
        .filter(|e| e.path().join("src").join("routes.rs").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for known in ["querygate-bigquery", "querygate-admin"] {
        assert!(
            fronts.iter().any(|f| f == known),
            "{known} has no routes.rs"
        );
    }
    for front in &fronts {
        let deps = dependencies(front);
        let names: Vec<&str> = deps
            .lines()
            .filter_map(|l| l.split(['=', '.', ' ']).next())
            .filter(|n| !n.is_empty())
            .collect();
        for other in fronts.iter().map(String::as_str).chain(["querygate-local"]) {
            assert!(
                other == front || !names.contains(&other),
                "{front} depends on {other}: fronts are peers and reach the rest through the pipeline"
            );
        }
    }
}
