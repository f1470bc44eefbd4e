//! A static IPv4 network from the host's `network` file: address and prefix on one
//! interface, an optional default gateway, loopback up. Set with the classic ioctls, so the
//! image needs no network tools.
//!
//! The host owns the network anyway: a wrong address here only makes the node unreachable,
//! which the host could do without us. Peers and clients still authenticate the node.
use std::fmt;
use std::io;
use std::net::Ipv4Addr;

/// The interface configured when the file names none (`net.ifnames=0` keeps it `eth0`).
pub const DEFAULT_INTERFACE: &str = "eth0";

#[derive(Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl fmt::Display for NetworkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.interface, self.address, self.prefix)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        Ok(())
    }
}

/// Reads `address <ip>/<prefix>` (required), `gateway <ip>`, `interface <name>`, one per
/// line; `#` comments and blank lines skipped; anything else is an error naming the line.
pub fn parse(text: &str) -> Result<NetworkConfig, String> {
    let mut interface = None;
    let mut address = None;
    let mut gateway = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |why: String| format!("line {}: {why}", number + 1);
        let (key, value) = line
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .ok_or_else(|| at(format!("expected `<key> <value>`, got {line:?}")))?;
        match key {
            "address" => {
                let (ip, prefix) = value
                    .split_once('/')
                    .ok_or_else(|| at(format!("expected <ipv4>/<prefix>, got {value:?}")))?;
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| at(format!("not an IPv4 address: {ip:?}")))?;
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| (1..=32).contains(p))
                    .ok_or_else(|| at(format!("the prefix must be 1-32, got {prefix:?}")))?;
                address = Some((ip, prefix));
            }
            "gateway" => {
                gateway = Some(
                    value
                        .parse::<Ipv4Addr>()
                        .map_err(|_| at(format!("not an IPv4 address: {value:?}")))?,
                );
            }
            "interface" => {
                let valid = !value.is_empty()
                    && value.len() < libc::IFNAMSIZ
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !valid {
                    return Err(at(format!("not an interface name: {value:?}")));
                }
                interface = Some(value.to_string());
            }
            other => {
                return Err(at(format!(
                    "unknown key {other:?} (address, gateway, interface)"
                )))
            }
        }
    }
    let (address, prefix) = address.ok_or("no `address <ipv4>/<prefix>` line")?;
    Ok(NetworkConfig {
        interface: interface.unwrap_or_else(|| DEFAULT_INTERFACE.to_string()),
        address,
        prefix,
        gateway,
    })
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// Brings up loopback and the configured interface, then the default route.
pub fn configure(config: &NetworkConfig) -> io::Result<()> {
    loopback_up()?;
    let socket = Socket::new()?;
    socket.set_address(&config.interface, libc::SIOCSIFADDR, config.address)?;
    socket.set_address(
        &config.interface,
        libc::SIOCSIFNETMASK,
        netmask(config.prefix),
    )?;
    socket.up(&config.interface)?;
    if let Some(gateway) = config.gateway {
        socket.default_route(gateway)?;
    }
    Ok(())
}

/// `lo` up (its address comes with it).
pub fn loopback_up() -> io::Result<()> {
    Socket::new()?.up("lo")
}

/// An AF_INET datagram socket, the handle the interface ioctls go through.
struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the C API is used.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(address) }
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> io::Result<()> {
    if rc < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(error.kind(), format!("{}: {error}", what())));
    }
    Ok(())
}

impl Socket {
    fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        check(fd, || "socket(AF_INET)".into())?;
        Ok(Self(fd))
    }

    fn request(interface: &str) -> io::Result<libc::ifreq> {
        // SAFETY: ifreq is plain data; all zero is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        let name = interface.as_bytes();
        if name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface name too long",
            ));
        }
        for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
            *slot = *byte as libc::c_char;
        }
        Ok(request)
    }

    fn set_address(&self, interface: &str, ioctl: libc::Ioctl, ip: Ipv4Addr) -> io::Result<()> {
        let mut request = Self::request(interface)?;
        request.ifr_ifru.ifru_addr = sockaddr_in(ip);
        // SAFETY: request is a valid ifreq for this ioctl.
        let rc = unsafe { libc::ioctl(self.0, ioctl, &mut request) };
        check(rc, || format!("setting {ip} on {interface}"))
    }

    fn up(&self, interface: &str) -> io::Result<()> {
        let mut request = Self::request(interface)?;
        // SAFETY: request is a valid ifreq; SIOCGIFFLAGS fills ifru_flags.
        let rc = unsafe { libc::ioctl(self.0, libc::SIOCGIFFLAGS, &mut request) };
        check(rc, || format!("reading the flags of {interface}"))?;
        // SAFETY: the union holds flags after SIOCGIFFLAGS.
        unsafe {
            request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short
        };
        // SAFETY: as above.
        let rc = unsafe { libc::ioctl(self.0, libc::SIOCSIFFLAGS, &mut request) };
        check(rc, || format!("bringing {interface} up"))
    }

    fn default_route(&self, gateway: Ipv4Addr) -> io::Result<()> {
        // SAFETY: rtentry is plain data; all zero is a valid value.
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr_in(gateway);
        route.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
        // SAFETY: route is a valid rtentry for SIOCADDRT.
        let rc = unsafe { libc::ioctl(self.0, libc::SIOCADDRT, &mut route) };
        check(rc, || format!("adding the default route via {gateway}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_full_network_file() {
        let config =
            parse("# from the host\naddress 10.0.2.15/24\ngateway 10.0.2.2\ninterface eth1\n")
                .expect("config");
        assert_eq!(
            config,
            NetworkConfig {
                interface: "eth1".into(),
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            }
        );
        assert_eq!(config.to_string(), "eth1 10.0.2.15/24 via 10.0.2.2");
        assert_eq!(
            parse("address 192.168.1.9/16").expect("minimal").interface,
            "eth0"
        );
    }

    #[test]
    fn netmasks_follow_the_prefix() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(1), Ipv4Addr::new(128, 0, 0, 0));
    }

    #[test]
    fn refuses_what_it_cannot_read_naming_the_line() {
        for (text, expected) in [
            ("", "no `address"),
            ("gateway 10.0.2.2", "no `address"),
            ("address 10.0.2.15", "line 1: expected <ipv4>/<prefix>"),
            ("address 10.0.2.15/33", "line 1: the prefix must be 1-32"),
            ("address 10.0.2.15/0", "line 1: the prefix must be 1-32"),
            ("address ::1/64", "line 1: not an IPv4 address"),
            (
                "address 10.0.2.15/24\ngateway x",
                "line 2: not an IPv4 address",
            ),
            (
                "address 10.0.2.15/24\ninterface ../etc",
                "line 2: not an interface name",
            ),
            (
                "address 10.0.2.15/24\ninterface averyveryverylongname",
                "line 2: not an interface name",
            ),
            ("dns 1.1.1.1", "line 1: unknown key"),
            ("address", "line 1: expected `<key> <value>`"),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
    }
}
