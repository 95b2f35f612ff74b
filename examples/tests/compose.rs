//! The docker-compose files, read, not run: these tests build no image and start no container.
//! They check that the compose file parses, every build context has its Dockerfile, the
//! Dockerfile's text names the programs the services run, every command line parses as that
//! program's flags, the README's curl commands use the published port, and the base images are
//! variables whose defaults are the official images.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_norway::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn compose() -> Result<Value> {
    let text = std::fs::read_to_string(root().join("docker-compose.yml"))?;
    let mut compose: Value = serde_norway::from_str(&text).context("docker-compose.yml")?;
    compose.apply_merge()?;
    Ok(compose)
}

fn strings(value: &Value) -> Result<Vec<String>> {
    value
        .as_sequence()
        .context("a list")?
        .iter()
        .map(|v| v.as_str().map(str::to_owned).context("a string"))
        .collect()
}

#[test]
fn every_service_names_a_build_context_here_and_a_program_with_valid_flags() -> Result<()> {
    let compose = compose()?;
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile"))?;
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .context("services")?;
    let mut programs = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().context("service name")?;
        names.insert(name.to_owned());
        if let Some(build) = service.get("build") {
            let (context, file) = match build {
                Value::String(context) => (context.clone(), "Dockerfile".to_owned()),
                other => (
                    other
                        .get("context")
                        .and_then(Value::as_str)
                        .unwrap_or(".")
                        .to_owned(),
                    other
                        .get("dockerfile")
                        .and_then(Value::as_str)
                        .unwrap_or("Dockerfile")
                        .to_owned(),
                ),
            };
            let dir = root().join(&context);
            assert!(
                dir.is_dir(),
                "{name}: build context {context} is no directory"
            );
            assert!(dir.join(&file).is_file(), "{name}: no {file} in {context}");
        } else {
            assert!(
                service.get("image").is_some(),
                "{name}: neither build nor image"
            );
            continue;
        }
        let command = strings(service.get("command").context("command")?)?;
        let program = command.first().context("empty command")?.clone();
        match program.as_str() {
            "user-rpc" => {
                let args = switchboard_examples::service::Args::try_parse_from(&command)
                    .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                assert_eq!(
                    (args.etcd.as_deref(), args.key.as_deref()),
                    (Some("etcd:2379"), Some("user.rpc")),
                    "{name}"
                );
                assert_eq!(args.name, name, "replies name the service");
            }
            "gateway" => {
                let args = switchboard_examples::gateway::Args::try_parse_from(&command)
                    .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                assert_eq!(args.etcd.as_deref(), Some("etcd:2379"));
                let port = args.listen.port();
                let published = strings(service.get("ports").context("gateway ports")?)?;
                assert!(
                    published.contains(&format!("{port}:{port}")),
                    "gateway listens on {port} but publishes {published:?}"
                );
                let readme = std::fs::read_to_string(root().join("README.md"))?;
                assert!(
                    readme.contains(&format!("curl localhost:{port}/api/user/1")),
                    "the README's curl commands use another port than {port}"
                );
            }
            other => bail!("{name}: runs {other}, which is no example program"),
        }
        assert!(
            dockerfile.contains(&format!("--bin {program}"))
                && dockerfile.contains(&format!("/src/target/release/{program}")),
            "the Dockerfile does not name {program} in its build and install steps"
        );
        programs.insert(program);
    }
    assert_eq!(
        programs.into_iter().collect::<Vec<_>>(),
        ["gateway", "user-rpc"]
    );
    for needed in ["etcd", "user-rpc-1", "user-rpc-2", "user-rpc-3", "gateway"] {
        assert!(names.contains(needed), "no {needed} service");
    }
    assert!(dockerfile.contains("cargo build --release -p switchboard-examples"));
    Ok(())
}

#[test]
fn the_services_wait_for_a_healthy_etcd_and_leave_gracefully() -> Result<()> {
    let compose = compose()?;
    let services = compose.get("services").context("services")?;
    let etcd = services.get("etcd").context("etcd")?;
    assert!(
        etcd.get("healthcheck").is_some(),
        "etcd has no health check"
    );
    for name in ["user-rpc-1", "user-rpc-2", "user-rpc-3", "gateway"] {
        let service = services.get(name).context(name.to_owned())?;
        let condition = service
            .get("depends_on")
            .and_then(|d| d.get("etcd"))
            .and_then(|e| e.get("condition"))
            .and_then(Value::as_str);
        assert_eq!(condition, Some("service_healthy"), "{name}");
    }
    for name in ["user-rpc-1", "user-rpc-2", "user-rpc-3"] {
        let service = services.get(name).context(name.to_owned())?;
        assert_eq!(
            service.get("stop_signal").and_then(Value::as_str),
            Some("SIGTERM"),
            "{name}"
        );
    }
    Ok(())
}

/// The base images are chosen by variables (RUST_IMAGE, DEBIAN_IMAGE, ETCD_IMAGE) that default to
/// the official images, so that one compose file and one Dockerfile serve a machine that pulls them
/// and one that builds stand-ins (`scripts/docker-images.sh`, which reads these defaults from the
/// `ARG` lines and etcd's `image:` line checked here).
#[test]
fn the_base_images_are_variables_that_default_to_the_official_images() -> Result<()> {
    let compose = compose()?;
    let services = compose.get("services").context("services")?;
    let etcd_image = services
        .get("etcd")
        .and_then(|etcd| etcd.get("image"))
        .and_then(Value::as_str);
    assert_eq!(
        etcd_image,
        Some("${ETCD_IMAGE:-quay.io/coreos/etcd:v3.5.17}")
    );

    let dockerfile = std::fs::read_to_string(root().join("Dockerfile"))?;
    let lines: Vec<&str> = dockerfile.lines().collect();
    let first_from = lines
        .iter()
        .position(|line| line.starts_with("FROM "))
        .context("no FROM")?;
    for (arg, official) in [
        ("RUST_IMAGE", "rust:1-bookworm"),
        ("DEBIAN_IMAGE", "debian:bookworm-slim"),
    ] {
        let declared = lines
            .iter()
            .position(|line| *line == format!("ARG {arg}={official}"))
            .with_context(|| format!("the Dockerfile declares no ARG {arg}={official}"))?;
        assert!(
            declared < first_from,
            "ARG {arg} comes after the first FROM, where FROM cannot use it"
        );
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with(&format!("FROM ${{{arg}}}"))),
            "no stage is built FROM ${{{arg}}}"
        );
        for name in ["user-rpc-1", "user-rpc-2", "user-rpc-3", "gateway"] {
            let passed = services
                .get(name)
                .and_then(|service| service.get("build"))
                .and_then(|build| build.get("args"))
                .and_then(|args| args.get(arg))
                .and_then(Value::as_str);
            assert_eq!(
                passed,
                Some(format!("${{{arg}:-{official}}}").as_str()),
                "{name} passes {arg} on from the environment, with the Dockerfile's default"
            );
        }
    }
    Ok(())
}
