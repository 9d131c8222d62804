//! The guest's network set-up with the kernel's own interface (ioctls on an `AF_INET` socket),
//! needing no program from the image: a template made from an OCI image may have no `ip`.
//! Loopback up; `eth0` given its IPv4 address and netmask and brought up; the default route via
//! the gateway.

use std::ffi::c_char;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An `AF_INET` datagram socket: the handle the interface ioctls go through.
fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A zeroed `ifreq` naming `name` (at most 15 bytes).
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?}")));
    }
    // SAFETY: `ifreq` is plain old data (arrays and a union of them); all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = c_char::from_ne_bytes([src]);
    }
    Ok(req)
}

/// An IPv4 `sockaddr` (as `sockaddr_in`, port 0).
fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` are both 16 bytes, and the kernel reads a
    // `sockaddr_in` from a `sockaddr` whose family is AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(sock: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to the struct type passed with it
    // (`ifreq` for the SIOC[GS]IF* ones, `rtentry` for SIOCADDRT), valid for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn bring_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the union's `ifru_flags` member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up = libc::c_short::try_from(libc::IFF_UP | libc::IFF_RUNNING).unwrap_or(1);
    req.ifr_ifru.ifru_flags = flags | up;
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req)
}

fn set_addr(sock: &OwnedFd, name: &str, request: libc::c_ulong, addr: Ipv4Addr) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(sock, request, &mut req)
}

/// The netmask of a prefix length (at most 32).
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    Ipv4Addr::from(bits)
}

/// Parses `ADDR/PREFIX` (an IPv4 address).
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((addr.parse().ok()?, prefix))
}

/// Loopback up; then, if given, `eth0` with `addr` and the default route via `gateway`.
pub fn configure(addr: Option<(Ipv4Addr, u8)>, gateway: Option<Ipv4Addr>) -> io::Result<()> {
    let sock = socket()?;
    bring_up(&sock, "lo")?;
    let Some((ip, prefix)) = addr else { return Ok(()) };
    set_addr(&sock, "eth0", libc::SIOCSIFADDR, ip)?;
    set_addr(&sock, "eth0", libc::SIOCSIFNETMASK, netmask(prefix))?;
    bring_up(&sock, "eth0")?;
    if let Some(gw) = gateway {
        let mut dev = *b"eth0\0";
        // SAFETY: `rtentry` is plain old data plus a pointer; all zeroes (a null `rt_dev`) is valid.
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr(gw);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        route.rt_dev = dev.as_mut_ptr().cast::<c_char>();
        ioctl(&sock, libc::SIOCADDRT, &mut route)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_and_cidrs() {
        assert_eq!(netmask(30), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(parse_cidr("169.254.0.21/30"), Some((Ipv4Addr::new(169, 254, 0, 21), 30)));
        assert_eq!(parse_cidr("169.254.0.21"), None);
        assert_eq!(parse_cidr("169.254.0.21/33"), None);
        assert_eq!(parse_cidr("fd00::1/64"), None);
    }

    #[test]
    fn interface_names_are_bounded() {
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("").is_err());
        assert!(ifreq("a-name-far-too-long").is_err());
    }

    #[test]
    fn sockaddrs_carry_the_address_in_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        // sin_port (2 bytes), then the address.
        let bytes: Vec<u8> = sa.sa_data.iter().map(|b| b.to_ne_bytes()[0]).collect();
        assert_eq!(&bytes[2..6], &[10, 1, 2, 3]);
    }
}
