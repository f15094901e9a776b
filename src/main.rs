//! `atrium`: one binary, a subcommand per role.
#![forbid(unsafe_code)]

mod route_check;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use atrium_data_plane::table::RouteTable;
use atrium_model::diagnostic::Diagnostic;
use atrium_model::values::Values;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "atrium", version, about = "Self-hosted multi-cluster API portal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests (one cluster's, or a topology directory) without starting anything.
    Lint {
        /// Manifest files or folders, or one topology directory (it has parent/values.yaml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Helm-style values of the cluster (ignored for a topology directory).
        #[arg(long)]
        values: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Which router gets each test request, and which path its backend sees.
    RouteCheck {
        /// The cluster's manifests (files or folders).
        #[arg(long, required = true)]
        manifests: Vec<PathBuf>,
        /// The YAML file of test requests.
        #[arg(long)]
        tests: PathBuf,
        /// Helm-style values of the cluster.
        #[arg(long)]
        values: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lint { paths, values, format } => lint(&paths, values.as_deref(), format),
        Command::RouteCheck { manifests, tests, values, format } => {
            route_check(&manifests, &tests, values.as_deref(), format)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("atrium: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn lint(paths: &[PathBuf], values: Option<&std::path::Path>, format: Format) -> anyhow::Result<ExitCode> {
    let refs: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
    let diags = atrium_model::lint::lint_paths(&refs, values);
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    match format {
        Format::Text => {
            for d in &diags {
                println!("{d}");
            }
            eprintln!("{errors} error(s), {warnings} warning(s)");
        }
        Format::Json => {
            let out = serde_json::json!({ "findings": diags, "errors": errors, "warnings": warnings });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(if errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn route_check(
    manifests: &[PathBuf],
    tests: &std::path::Path,
    values: Option<&std::path::Path>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    for m in manifests {
        anyhow::ensure!(m.exists(), "{}: no such file or directory", m.display());
    }
    let tests = route_check::read_tests(tests).map_err(anyhow::Error::msg)?;
    let (values, mut diags): (Values, Vec<Diagnostic>) = match values {
        Some(v) => Values::load(v),
        None => (Values::default(), Vec::new()),
    };
    let loaded = atrium_model::loader::load_paths(manifests);
    let compiled = atrium_model::compile::compile(&loaded, &values, None);
    diags.extend(loaded.diagnostics.iter().cloned());
    diags.extend(compiled.diagnostics.iter().cloned());
    for d in diags.iter().filter(|d| d.is_error()) {
        eprintln!("{d}");
    }
    let table =
        RouteTable::from_snapshot(&compiled.body).context("compiled configuration does not form a route table")?;
    let outcomes: Vec<route_check::Outcome> = tests.tests.iter().map(|c| route_check::run_case(&table, c)).collect();
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let failed = outcomes.len() - passed;
    match format {
        Format::Text => {
            for o in &outcomes {
                match &o.error {
                    None => println!("PASS {}", o.name),
                    Some(e) => println!("FAIL {}: {e}", o.name),
                }
            }
            println!("{passed} passed, {failed} failed");
        }
        Format::Json => {
            let out = serde_json::json!({ "results": outcomes, "passed": passed, "failed": failed });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
