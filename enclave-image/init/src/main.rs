//! PID 1 of the tessera enclave image.
//!
//! It owns the boot of the trust domain up to `tessera node` and nothing else: it mounts
//! the kernel's filesystems, loads the kernel modules the image lists (in the order the
//! image build resolved from their dependencies), copies the host-supplied configuration
//! out of QEMU's fw_cfg into memory, brings up the network, and then starts
//! `tessera node --config /run/tessera/node.toml`, reaping every child. When the node
//! exits the TD powers off: there is no shell, no login and nothing else to run.
//!
//! It must not make decisions about trust. The configuration it copies is untrusted (the
//! host writes fw_cfg); the node checks what it reads, and binding the configuration to
//! the quote is the node's job. Every step logs to the console, so a boot that stops says
//! where.
//!
//! Files of the image it reads:
//! - `/etc/tessera/modules`: one module per line, `<path> required|optional`.
//!
//! Files the host supplies (fw_cfg `opt/tessera/<name>`, copied to `/run/tessera/<name>`):
//! - `node.toml` (required) and whatever it points to (policies, in development images the
//!   group key);
//! - `network` (optional): `address <ip>/<prefix>`, `gateway <ip>`, `interface <name>`.
mod fwcfg;
mod modules;
mod net;
mod sys;

use std::path::Path;
use std::process::ExitCode;

/// Where the host's configuration is copied, in memory.
const RUN_DIR: &str = "/run/tessera";
/// The node binary in the image.
const TESSERA: &str = "/bin/tessera";
/// The module list the image build writes.
const MODULE_LIST: &str = "/etc/tessera/modules";

fn main() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!("tessera-init: not PID 1; this program boots the enclave image and nothing else");
        return ExitCode::FAILURE;
    }
    match boot() {
        Ok(status) => log(&format!("tessera node exited: {status}")),
        Err(error) => log(&format!("boot failed: {error}")),
    }
    sys::power_off()
}

/// Everything up to the node's exit; an error is a step that could not be done.
fn boot() -> Result<std::process::ExitStatus, String> {
    sys::mount_early().map_err(|e| format!("mounting the kernel filesystems: {e}"))?;
    let list =
        std::fs::read_to_string(MODULE_LIST).map_err(|e| format!("reading {MODULE_LIST}: {e}"))?;
    let wanted = modules::parse_list(&list).map_err(|e| format!("{MODULE_LIST}: {e}"))?;
    for module in &wanted {
        match sys::load_module(Path::new(&module.path)) {
            Ok(()) => log(&format!("loaded {}", module.path)),
            Err(e) if module.required => {
                return Err(format!("loading required module {}: {e}", module.path))
            }
            Err(e) => log(&format!("optional module {} not loaded: {e}", module.path)),
        }
    }
    sys::mount_configfs().map_err(|e| format!("mounting configfs: {e}"))?;
    let copied = fwcfg::copy_all(Path::new(fwcfg::FW_CFG_DIR), Path::new(RUN_DIR))
        .map_err(|e| format!("copying the configuration from fw_cfg: {e}"))?;
    log(&format!("configuration from fw_cfg: {}", copied.join(", ")));
    let network_file = Path::new(RUN_DIR).join("network");
    if network_file.exists() {
        let text = std::fs::read_to_string(&network_file)
            .map_err(|e| format!("reading {}: {e}", network_file.display()))?;
        let config = net::parse(&text).map_err(|e| format!("{}: {e}", network_file.display()))?;
        net::configure(&config).map_err(|e| format!("configuring the network: {e}"))?;
        log(&format!("network: {config}"));
    } else {
        net::loopback_up().map_err(|e| format!("bringing up lo: {e}"))?;
        log("network: no opt/tessera/network given; loopback only");
    }
    let config = Path::new(RUN_DIR).join("node.toml");
    if !config.exists() {
        return Err(format!(
            "no node configuration: the host must pass fw_cfg opt/tessera/node.toml ({} is missing)",
            config.display()
        ));
    }
    log(&format!(
        "starting {TESSERA} node --config {}",
        config.display()
    ));
    let child = std::process::Command::new(TESSERA)
        .arg("node")
        .arg("--config")
        .arg(&config)
        .current_dir(RUN_DIR)
        .spawn()
        .map_err(|e| format!("starting {TESSERA}: {e}"))?;
    sys::reap_until(child.id()).map_err(|e| format!("waiting for {TESSERA}: {e}"))
}

/// One line on the console, marked as ours.
fn log(line: &str) {
    eprintln!("tessera-init: {line}");
}
