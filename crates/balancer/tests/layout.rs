//! The crate's layout stays as the README describes it: its top-level modules import each other
//! without a circle, and no source file outgrows about 500 lines of code (tests aside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The top-level module a file belongs to: `control` for `src/control/mod.rs` and
/// `src/control/sub.rs`, `worker` for `src/worker.rs`.
fn module(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap_or(file);
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

fn is_test_file(file: &Path) -> bool {
    file.file_name().is_some_and(|n| n == "tests.rs")
        || file.components().any(|c| c.as_os_str() == "tests")
}

/// The code of a file without its tests and comments.
fn code(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect()
}

/// A circle of imports through `m`, if there is one.
fn circle(
    m: &str,
    imports: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<String> {
    if let Some(at) = path.iter().position(|p| p == m) {
        return Some(format!("{} -> {m}", path[at..].join(" -> ")));
    }
    if done.contains(m) {
        return None;
    }
    path.push(m.to_owned());
    for next in imports.get(m).into_iter().flatten() {
        if let Some(found) = circle(next, imports, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(m.to_owned());
    None
}

#[test]
fn modules_import_each_other_without_a_circle_and_files_stay_small() -> std::io::Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files)?;
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut too_long = Vec::new();
    for file in &files {
        if is_test_file(file) {
            continue;
        }
        let text = std::fs::read_to_string(file)?;
        let code = code(&text);
        if code.len() > 500 {
            too_long.push(format!("{}: {} lines", file.display(), code.len()));
        }
        let from = module(&src, file);
        let deps = imports.entry(from.clone()).or_default();
        for line in code {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != from {
                    deps.insert(name);
                }
            }
        }
    }
    assert!(too_long.is_empty(), "{too_long:?}");
    assert!(imports["worker"].contains("control"), "{imports:#?}");
    let mut done = BTreeSet::new();
    for m in imports.keys() {
        if let Some(found) = circle(m, &imports, &mut Vec::new(), &mut done) {
            panic!("import circle: {found}\n{imports:#?}");
        }
    }
    Ok(())
}
