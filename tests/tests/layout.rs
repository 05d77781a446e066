//! The workspace's shape, checked from its sources (no services needed): the crate dependencies
//! ARCHITECTURE.md promises, no two modules of one crate importing each other (no module
//! cycle at all), and every source file opening with a `//!` line that says what it owns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_path_buf()
}

/// Every library and binary crate of the workspace: (name, its `src` folder).
fn crates() -> Vec<(String, PathBuf)> {
    let root = root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = &manifest[manifest.find("members = [").expect("a members list")..];
    let members = &members[..members.find(']').unwrap()];
    members
        .split('"')
        .skip(1)
        .step_by(2)
        .map(|m| {
            let dir = root.join(m);
            // warren-tests keeps its library at its root, beside the test crates.
            let src = if dir.join("src").is_dir() { dir.join("src") } else { dir.join("lib.rs") };
            (m.to_string(), src)
        })
        .collect()
}

/// The normal (not dev) dependencies a member's Cargo.toml names.
fn dependencies(member: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(member).join("Cargo.toml")).unwrap();
    let mut out = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section.ends_with("dependencies]") && !section.contains("dev-dependencies") {
            if let Some((name, _)) = line.split_once(['=', '.']) {
                if !name.trim().is_empty() && !name.starts_with('#') {
                    out.insert(name.trim().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn crates_depend_only_downwards() {
    let warren = |member: &str| -> BTreeSet<String> {
        dependencies(member).into_iter().filter(|d| d.starts_with("warren-")).collect()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(warren("common/wire"), set(&[]), "the wire contract stands alone");
    assert_eq!(warren("common/service"), set(&[]));
    assert_eq!(warren("common/store"), set(&["warren-wire", "warren-service"]));
    assert_eq!(warren("common/transport"), set(&["warren-wire", "warren-service"]));
    let roles = set(&["warren-wire", "warren-service", "warren-store", "warren-transport"]);
    assert_eq!(warren("worker"), roles, "the worker knows nothing of management");
    assert_eq!(warren("management/server"), roles, "management does not depend on the worker");
    // The wire contract talks to no database and no broker.
    let wire = dependencies("common/wire");
    for driver in ["lapin", "sqlx", "tiberius", "bb8", "tokio", "axum"] {
        assert!(!wire.contains(driver), "warren-wire depends on {driver}");
    }
}

/// A crate's modules: module path ("" for the crate root, "a::b") → its source file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if name == "bin" && prefix.is_empty() {
                    continue; // each file there is a crate of its own
                }
                walk(&path, &join(prefix, &name), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "lib" | "main" if prefix.is_empty() => String::new(),
                    "mod" => prefix.to_string(),
                    _ => join(prefix, &name),
                };
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    if src.is_file() {
        out.insert(String::new(), src.to_path_buf());
    } else {
        walk(src, "", &mut out);
    }
    out
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}::{name}")
    }
}

/// The code of a file without comments, string literals and its `#[cfg(test)]` tail (tests
/// may reach anywhere).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    // Test modules (`#[cfg(test)]`, `#[cfg(all(test, windows))]`) close a file: what they
    // import is not the module's.
    let text = match ["#[cfg(test)]", "#[cfg(all(test"].iter().filter_map(|m| text.find(m)).min() {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut kept = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                kept.push(c);
            }
            prev = c;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// The modules of the crate that the module `from` names in its code.
fn imports(from: &str, code: &str, all: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    // Paths as written: `crate::a::b`, `super::a`, `self::a`, and a child's name `a::` (its
    // own children are in scope without a prefix), including grouped ones (`crate::{a, b::c}`).
    let mut paths: Vec<String> = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1]) && bytes[i - 1] != ':') {
            let start = i;
            while i < bytes.len() && (ident(bytes[i]) || (bytes[i] == ':' && bytes.get(i + 1) == Some(&':'))) {
                i += if bytes[i] == ':' { 2 } else { 1 };
            }
            let path: String = bytes[start..i].iter().collect();
            if path.ends_with("::") && bytes.get(i) == Some(&'{') {
                let end = (i..bytes.len()).find(|&j| bytes[j] == '}').unwrap_or(bytes.len());
                let group: String = bytes[i + 1..end].iter().collect();
                for item in group.split(',') {
                    paths.push(format!("{path}{}", item.trim()));
                }
                i = end;
            } else if path.contains("::") {
                paths.push(path);
            }
        } else {
            i += 1;
        }
    }
    let parent = |m: &str| m.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default();
    let mut out = BTreeSet::new();
    for path in paths {
        let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let mut base = match segments.first() {
            Some(&"crate") => {
                segments.remove(0);
                String::new()
            }
            Some(&"self") => {
                segments.remove(0);
                from.to_string()
            }
            Some(&"super") => {
                let mut m = from.to_string();
                while segments.first() == Some(&"super") {
                    segments.remove(0);
                    m = parent(&m);
                }
                m
            }
            Some(first) if all.contains_key(&join(from, first)) => from.to_string(),
            _ => continue,
        };
        // The deepest module the path goes through.
        let mut target = base.clone();
        for s in segments {
            base = join(&base, s);
            if all.contains_key(&base) {
                target = base.clone();
            } else {
                break;
            }
        }
        if target != from {
            out.insert(target);
        }
    }
    out
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let mut problems = Vec::new();
    for (member, src) in crates() {
        let all = modules(&src);
        let graph: BTreeMap<String, BTreeSet<String>> =
            all.iter().map(|(m, path)| (m.clone(), imports(m, &code(path), &all))).collect();
        // A module declaring its children is not an import of them; a parent's `use child::x`
        // or `child::f()` is. Any cycle among the edges left is a problem.
        for (m, deps) in &graph {
            for d in deps {
                if let Some(back) = path_between(&graph, d, m) {
                    let shown = if m.is_empty() { "(root)" } else { m };
                    problems.push(format!("{member}: {shown} -> {} -> {}", back.join(" -> "), shown));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "modules that import each other (directly or around a cycle):\n{}",
        problems.join("\n")
    );
}

/// A path of imports from `from` to `to`, if there is one.
fn path_between(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    while let Some((m, path)) = stack.pop() {
        if m == to {
            return Some(
                path[..path.len() - 1].iter().map(|m| if m.is_empty() { "(root)".into() } else { m.clone() }).collect(),
            );
        }
        if !seen.insert(m.clone()) {
            continue;
        }
        for d in graph.get(&m).into_iter().flatten() {
            let mut p = path.clone();
            p.push(d.clone());
            stack.push((d.clone(), p));
        }
    }
    None
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut missing = Vec::new();
    for (_, src) in crates() {
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            if dir.is_file() {
                stack.push(dir.parent().unwrap().join("tests"));
                continue;
            }
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    if !text.starts_with("//!") {
                        missing.push(p.display().to_string());
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "files without a `//!` first line:\n{}", missing.join("\n"));
}
