//! The README's Rust snippets are real code: each line of each snippet
//! appears, in order, in `examples/src/bin/wiring.rs`, which CI builds, and
//! that program serves and makes calls through every layer it shows.

use std::path::Path;

use crate::support::example_binary;

fn workspace_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Rust code blocks of a Markdown text, with their info strings.
fn rust_blocks(markdown: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<String> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .map(str::to_owned)
            .collect();
        if info.starts_with("rust") {
            blocks.push((info.to_owned(), body));
        }
    }
    blocks
}

#[test]
fn every_readme_snippet_is_compiled_code_in_the_wiring_example() {
    let readme = workspace_file("README.md");
    let source: Vec<String> = workspace_file("examples/src/bin/wiring.rs")
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    let blocks = rust_blocks(&readme);
    assert!(blocks.len() >= 5, "{} Rust blocks", blocks.len());
    for (info, body) in blocks {
        assert_eq!(info, "rust", "a snippet that is not checked: ```{info}");
        let mut rest = source.iter();
        for line in body.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
            assert!(
                rest.any(|s| s == line),
                "README line not found (in order) in examples/src/bin/wiring.rs: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wiring_example_serves_and_calls() -> anyhow::Result<()> {
    let mut command = tokio::process::Command::new(example_binary("wiring")?);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_")) {
        command.env_remove(name);
    }
    let output = command
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Volo gRPC, Volo Thrift, Volo HTTP and tonic (twice).
    assert_eq!(stdout.matches(" -> served by ").count(), 5, "{stdout}");
    assert!(stdout.contains("volo  stream -> tick 3"), "{stdout}");
    // Client and server spans of each, printed by the stdout exporter.
    for name in [
        "echo.Echo/Say",
        "echo.Echo/Count",
        "ThriftEcho/say",
        "GET /users/{id}",
    ] {
        assert!(
            stdout.contains(&format!("Name         : {name}")),
            "{name}: {stdout}"
        );
    }
    Ok(())
}
