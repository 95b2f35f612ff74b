//! The docker-compose files, read, not run: these tests build no image and start no container
//! (`compose_cluster/` does). They check that the compose file parses, one service builds the
//! examples image and the others run it, the Dockerfile's text names the programs the services
//! run, every command line (and the gateway's config file) parses as that program's, etcd is a
//! cluster of three on its own network, the README's curl commands use the published port, and
//! the base images are variables whose defaults are the official images.

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

/// The etcd members, as every service is given them.
const ETCD_HOSTS: [&str; 3] = ["etcd-1:2379", "etcd-2:2379", "etcd-3:2379"];

/// The image the example programs are built into, by one service, and run by the others.
const EXAMPLES_IMAGE: &str = "switchboard-examples";

fn networks(service: &Value) -> BTreeSet<String> {
    match service.get("networks") {
        Some(Value::Sequence(names)) => names
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::Mapping(names)) => names
            .keys()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// The file on this side of a service's bind mount of `target` (`./HOST:TARGET[:ro]`).
fn mounted(service: &Value, target: &Path) -> Result<PathBuf> {
    let volumes = strings(service.get("volumes").context("volumes")?)?;
    volumes
        .iter()
        .find_map(|volume| {
            let mut parts = volume.split(':');
            let host = parts.next()?;
            (Path::new(parts.next()?) == target).then(|| root().join(host))
        })
        .with_context(|| format!("nothing is mounted at {}", target.display()))
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
    let mut builders = Vec::new();
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
            builders.push(name.to_owned());
        }
        let image = service.get("image").and_then(Value::as_str);
        if image != Some(EXAMPLES_IMAGE) {
            assert!(
                service.get("build").is_none(),
                "{name}: builds an image other than {EXAMPLES_IMAGE}"
            );
            assert!(image.is_some(), "{name}: neither build nor image");
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
                    (Some(ETCD_HOSTS.join(",").as_str()), Some("user.rpc")),
                    "{name}"
                );
                assert_eq!(args.name, name, "replies name the service");
                // Dialled by its name on the data network, which only that network knows.
                let alias = format!("{name}-data");
                assert_eq!(
                    args.advertise.as_deref(),
                    Some(format!("{alias}:8080").as_str())
                );
                let aliases = service
                    .get("networks")
                    .and_then(|n| n.get("data"))
                    .and_then(|d| d.get("aliases"))
                    .context(format!("{name}: no aliases on the data network"))?;
                assert_eq!(strings(aliases)?, [alias], "{name}");
            }
            "gateway" => {
                let args = switchboard_examples::gateway::Args::try_parse_from(&command)
                    .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                let file = args.user_rpc.context("gateway: no --user-rpc")?;
                let config = switchboard::ClientConfig::from_file(mounted(service, &file)?)?;
                let etcd = config.etcd.context("gateway: no Etcd section")?;
                assert_eq!(etcd.hosts, ETCD_HOSTS);
                assert_eq!(etcd.key, "user.rpc");
                // A silent instance leaves within the keepalives, sooner than a call's deadline.
                let (time, timeout) = (
                    config.keepalive_time.context("no KeepaliveTime")?,
                    config.keepalive_timeout.context("no KeepaliveTimeout")?,
                );
                assert!(
                    time + timeout <= std::time::Duration::from_secs(5),
                    "{time:?} + {timeout:?}"
                );
                assert!(config.timeout.is_some_and(|t| t > time + timeout));
                let port = args.listen.port();
                let published = strings(service.get("ports").context("gateway ports")?)?;
                assert_eq!(
                    published,
                    [format!("${{GATEWAY_PORT:-{port}}}:{port}")],
                    "gateway listens on {port}"
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
    assert_eq!(builders, ["user-rpc-1"], "one service builds the image");
    for needed in [
        "etcd-1",
        "etcd-2",
        "etcd-3",
        "user-rpc-1",
        "user-rpc-2",
        "user-rpc-3",
        "gateway",
    ] {
        assert!(names.contains(needed), "no {needed} service");
    }
    assert!(dockerfile.contains("cargo build --release -p switchboard-examples"));
    Ok(())
}

#[test]
fn etcd_is_a_cluster_of_three_on_the_control_network() -> Result<()> {
    let compose = compose()?;
    let services = compose.get("services").context("services")?;
    let cluster = ["etcd-1", "etcd-2", "etcd-3"]
        .map(|name| format!("{name}=http://{name}:2380"))
        .join(",");
    for name in ["etcd-1", "etcd-2", "etcd-3"] {
        let etcd = services.get(name).context(name.to_owned())?;
        assert!(
            etcd.get("healthcheck").is_some(),
            "{name} has no health check"
        );
        let command = strings(etcd.get("command").context("command")?)?;
        for flag in [
            format!("--name={name}"),
            format!("--advertise-client-urls=http://{name}:2379"),
            format!("--initial-advertise-peer-urls=http://{name}:2380"),
            format!("--initial-cluster={cluster}"),
            "--initial-cluster-state=new".to_owned(),
        ] {
            assert!(command.contains(&flag), "{name} lacks {flag}");
        }
        assert_eq!(networks(etcd), BTreeSet::from(["control".to_owned()]));
    }
    // The published port goes through a network with a way out: `data`, whatever the gateway's
    // link to `control`.
    assert_eq!(
        compose
            .get("networks")
            .and_then(|n| n.get("control"))
            .and_then(|c| c.get("internal"))
            .and_then(Value::as_bool),
        Some(true),
        "the control network is not internal"
    );
    for name in ["user-rpc-1", "user-rpc-2", "user-rpc-3", "gateway"] {
        let service = services.get(name).context(name.to_owned())?;
        assert_eq!(
            networks(service),
            BTreeSet::from(["control".to_owned(), "data".to_owned()]),
            "{name}"
        );
    }
    Ok(())
}

#[test]
fn the_services_wait_for_a_healthy_etcd_and_leave_gracefully() -> Result<()> {
    let compose = compose()?;
    let services = compose.get("services").context("services")?;
    for name in ["user-rpc-1", "user-rpc-2", "user-rpc-3", "gateway"] {
        let service = services.get(name).context(name.to_owned())?;
        for etcd in ["etcd-1", "etcd-2", "etcd-3"] {
            let condition = service
                .get("depends_on")
                .and_then(|d| d.get(etcd))
                .and_then(|e| e.get("condition"))
                .and_then(Value::as_str);
            assert_eq!(condition, Some("service_healthy"), "{name} on {etcd}");
        }
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
    for name in ["etcd-1", "etcd-2", "etcd-3"] {
        let etcd_image = services
            .get(name)
            .and_then(|etcd| etcd.get("image"))
            .and_then(Value::as_str);
        assert_eq!(
            etcd_image,
            Some("${ETCD_IMAGE:-quay.io/coreos/etcd:v3.5.17}"),
            "{name}"
        );
    }

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
        let passed = services
            .get("user-rpc-1")
            .and_then(|service| service.get("build"))
            .and_then(|build| build.get("args"))
            .and_then(|args| args.get(arg))
            .and_then(Value::as_str);
        assert_eq!(
            passed,
            Some(format!("${{{arg}:-{official}}}").as_str()),
            "user-rpc-1 passes {arg} on from the environment, with the Dockerfile's default"
        );
    }
    // The others run the image user-rpc-1 builds, and start after it (so that it is built
    // first, and built once).
    for name in ["user-rpc-2", "user-rpc-3", "gateway"] {
        let service = services.get(name).context(name.to_owned())?;
        assert_eq!(
            service.get("image").and_then(Value::as_str),
            Some(EXAMPLES_IMAGE),
            "{name}"
        );
        assert!(
            service
                .get("depends_on")
                .and_then(|d| d.get("user-rpc-1"))
                .is_some(),
            "{name} does not start after user-rpc-1, which builds its image"
        );
    }
    Ok(())
}
