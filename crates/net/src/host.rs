//! The host's side of sandbox networking: IPv4 forwarding and the host's `inet ember` table
//! ([`crate::nft::host_rules`]). Installing is idempotent and replaces the table whole, so a
//! daemon that starts after a crash puts it right; removing leaves the host as Ember found it
//! (forwarding off again if Ember turned it on), once no slot link is left.

use std::path::Path;

use crate::nft::{self, HOST_LINK_PREFIX};
use crate::policy::Guard;
use crate::NetError;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Present while Ember holds forwarding on that was off before it (survives a crash, so a
/// later daemon still knows to turn it off again).
const FORWARD_MARKER: &str = "/run/ember-net/forwarding-was-off";

/// Turns IPv4 forwarding on (recording that it was off) and installs the host's rules.
pub fn install(guard: &Guard) -> Result<(), NetError> {
    let marker = Path::new(FORWARD_MARKER);
    let on = std::fs::read_to_string(IP_FORWARD).map_err(io(IP_FORWARD))?.trim() == "1";
    if !on {
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir).map_err(io("create /run/ember-net"))?;
        }
        std::fs::write(marker, b"").map_err(io(FORWARD_MARKER))?;
    }
    // Rules first, so that nothing but the slots' traffic is forwarded once forwarding is on.
    nft::nft_host(&nft::host_rules(guard, marker.exists()))?;
    if !on {
        std::fs::write(IP_FORWARD, b"1").map_err(io(IP_FORWARD))?;
    }
    Ok(())
}

/// Removes the host's rules and turns forwarding off again if Ember turned it on, unless a
/// slot link still exists after `wait` (another Ember process, or sandboxes left to be adopted;
/// a deleted namespace goes once the sockets closed in it are done, seconds at most).
pub fn remove(wait: std::time::Duration) -> Result<(), NetError> {
    let deadline = std::time::Instant::now() + wait;
    while slot_links() > 0 {
        if std::time::Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let marker = Path::new(FORWARD_MARKER);
    if marker.exists() {
        std::fs::write(IP_FORWARD, b"0").map_err(io(IP_FORWARD))?;
        let _ = std::fs::remove_file(marker);
    }
    nft::nft_host(&nft::delete_rules())
}

/// How many slot links (`emhN`) the host has.
pub fn slot_links() -> usize {
    std::fs::read_dir("/sys/class/net")
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(HOST_LINK_PREFIX)).count())
        .unwrap_or(0)
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> NetError + '_ {
    move |source| NetError::Io { context: context.to_string(), source }
}
