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

/// The code of a file without its tests (what follows `#[cfg(test)]`) and without comments.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("").to_string()))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect()
}

/// The vocabulary, the analysis, the policy and the pipeline are the same for every front
/// and source: they never name a wire's status codes or HTTP types, nor BigQuery's calls,
/// fields or types (a front's codes come through `StatusCodes`; a source says its dialect,
/// its table names and whether it accepted a call).
#[test]
fn the_core_names_no_protocol() {
    let forbidden = [
        "StatusCode::",
        "http::",
        "axum",
        "200..300",
        "tabledata",
        "\"jobs.",
        "BigQueryReply",
        "bq_type",
        "useLegacySql",
        "maximumBytesBilled",
        "Api::",
    ];
    let codes = [
        "200", "201", "204", "400", "401", "403", "404", "409", "413", "500", "502", "503",
    ];
    let mut found = Vec::new();
    for krate in [
        "querygate-core",
        "querygate-sql",
        "querygate-policy",
        "querygate-pipeline",
    ] {
        let mut files = Vec::new();
        rust_files(&root().join("crates").join(krate).join("src"), &mut files);
        for file in files.iter().filter(|f| !f.ends_with("tests.rs")) {
            for (n, line) in code_lines(file) {
                let words: Vec<&str> = line
                    .split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
                    .collect();
                let status = line.to_ascii_lowercase().contains("status");
                if forbidden.iter().any(|f| line.contains(f))
                    || words.contains(&"StatusCode")
                    || (status && codes.iter().any(|c| words.contains(c)))
                {
                    found.push(format!("{}:{n}: {}", file.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "protocol words in the core:\n{}",
        found.join("\n")
    );
}

/// Every front has the same files, so a reader finds the same thing in the same place in
/// each: its wire's shapes, its listener glue, decoding, rendering (the one place its
/// status codes are chosen) and its tests.
#[test]
fn every_front_has_the_same_files() {
    let fronts: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .expect("crates")
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|src| src.join("routes.rs").is_file())
        .collect();
    assert!(fronts.len() >= 2, "fronts: {fronts:?}");
    for src in &fronts {
        for file in [
            "lib.rs",
            "model.rs",
            "routes.rs",
            "decode.rs",
            "render.rs",
            "tests.rs",
        ] {
            assert!(
                src.join(file).is_file(),
                "{} has no {file}: every front has lib, model, routes, decode, render and tests",
                src.display()
            );
        }
        let render = std::fs::read_to_string(src.join("render.rs")).unwrap_or_default();
        assert!(
            render.contains("DenialKind::"),
            "{}: render.rs is where the front maps denials to its codes",
            src.display()
        );
    }
}
