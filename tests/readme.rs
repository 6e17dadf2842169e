//! The README's program is one a user can paste: it is `examples/readme_with_your_idp.rs` (which
//! CI builds with the examples), and it builds in a project of its own with nothing but the
//! README's `[dependencies]` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXAMPLE: &str = "examples/readme_with_your_idp.rs";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    fs::read_to_string(root().join("README.md")).unwrap()
}

/// The fenced code blocks of a Markdown text: (info string, contents).
fn code_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        match open.as_mut() {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    open = Some((info.trim().to_owned(), String::new()));
                }
            }
            Some((_, text)) if line.trim_end() == "```" => {
                let text = std::mem::take(text);
                let (info, _) = open.take().unwrap();
                blocks.push((info, text));
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(
        open.is_none(),
        "README.md has a code block that is never closed"
    );
    blocks
}

/// The README's program: its first Rust block.
fn readme_program(readme: &str) -> String {
    code_blocks(readme)
        .into_iter()
        .find(|(info, _)| info.split(',').next() == Some("rust"))
        .map(|(_, text)| text)
        .expect("README.md has a ```rust block")
}

/// The README's `[dependencies]` block.
fn readme_dependencies(readme: &str) -> String {
    code_blocks(readme)
        .into_iter()
        .find(|(info, text)| info == "toml" && text.trim_start().starts_with("[dependencies]"))
        .map(|(_, text)| text)
        .expect("README.md has a ```toml block starting with [dependencies]")
}

#[test]
fn the_readme_program_is_the_example_file() {
    let readme = readme();
    let in_readme = readme_program(&readme);
    let in_example = fs::read_to_string(root().join(EXAMPLE)).unwrap();
    let (in_readme, in_example) = (in_readme.trim(), in_example.trim());
    if in_readme == in_example {
        return;
    }
    let line = in_readme
        .lines()
        .zip(in_example.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| in_readme.lines().count().min(in_example.lines().count()));
    panic!(
        "README.md's Rust block and {EXAMPLE} differ from line {} of the program on:\n\
         README.md: {:?}\n{EXAMPLE}: {:?}\n\
         change one and copy it to the other",
        line + 1,
        in_readme.lines().nth(line),
        in_example.lines().nth(line),
    );
}

#[test]
fn the_readme_program_has_no_hidden_lines() {
    // rustdoc hides `# ` lines on the rendered page; a user pasting the program would miss them.
    let program = readme_program(&readme());
    let hidden: Vec<&str> = program
        .lines()
        .filter(|l| l.trim_start().starts_with("# ") || l.trim() == "#")
        .collect();
    assert!(hidden.is_empty(), "hidden doctest lines: {hidden:?}");
}

/// Builds the README's program as a user would: a new package whose `[dependencies]` are the
/// README's lines, with the git dependency on tokenwarden pointed at this checkout instead. The
/// workspace's lock file is copied in so the build needs no network and the versions are the
/// ones the suite tests.
#[test]
fn the_readme_program_builds_with_the_readme_dependency_lines() {
    let readme = readme();
    let tokenwarden = root().join("crates/tokenwarden");
    let mut replaced = false;
    let dependencies: String = readme_dependencies(&readme)
        .lines()
        .map(|line| {
            if line.starts_with("tokenwarden =") {
                assert!(
                    line.contains("git = \"https://example.invalid/tokenwarden\""),
                    "the README's tokenwarden line names the workspace's repository: {line}"
                );
                replaced = true;
                format!("tokenwarden = {{ path = {:?} }}\n", tokenwarden.display())
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(
        replaced,
        "the README's [dependencies] have a `tokenwarden =` line"
    );

    let project = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("readme-program");
    fs::create_dir_all(project.join("src")).unwrap();
    let manifest = format!(
        "[package]\nname = \"readme-program\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
         # Not a member of the tokenwarden workspace above it.\n[workspace]\n\n{dependencies}"
    );
    write_if_changed(&project.join("Cargo.toml"), &manifest);
    write_if_changed(&project.join("src/main.rs"), &readme_program(&readme));
    // Cargo prunes the copy to this package's graph; copied afresh, it follows the workspace's.
    fs::copy(root().join("Cargo.lock"), project.join("Cargo.lock")).unwrap();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["check", "--offline", "--quiet", "--message-format", "short"])
        .arg("--target-dir")
        .arg(project.join("target"))
        .current_dir(&project)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "the README's program does not build with the README's [dependencies] ({}):\n{}",
        project.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes `text` unless the file holds it already, so cargo's fingerprints stay fresh.
fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).unwrap();
    }
}
