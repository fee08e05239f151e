//! A Volo callee's static address as label text, formatted on the stack:
//! the Volo layers read it on every call, and a `String` per call is what
//! the handle cache exists to avoid.

use std::{fmt::Write as _, net::IpAddr};

/// Room for the longest IPv6 text form (45 bytes).
const CAPACITY: usize = 48;

/// An IP address as text, without allocating.
pub(crate) struct IpText {
    buf: [u8; CAPACITY],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        Self {
            buf: [0; CAPACITY],
            len: 0,
        }
    }
}

impl IpText {
    /// `ip` as text (`127.0.0.1`, `::1`).
    pub(crate) fn format(&mut self, ip: IpAddr) -> &str {
        self.len = 0;
        match ip {
            // By hand: the formatting machinery costs several hundred
            // instructions per call, on every Volo client call.
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    self.push_decimal(octet);
                }
            }
            // Cannot overflow: CAPACITY holds every address's text.
            IpAddr::V6(_) => {
                let _ = write!(self, "{ip}");
            }
        }
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn push_decimal(&mut self, n: u8) {
        if n >= 100 {
            self.push(b'0' + n / 100);
        }
        if n >= 10 {
            self.push(b'0' + n / 10 % 10);
        }
        self.push(b'0' + n % 10);
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_v4_and_the_longest_v6() {
        let mut text = IpText::default();
        assert_eq!(text.format("127.0.0.1".parse().unwrap()), "127.0.0.1");
        for v4 in ["0.0.0.0", "10.0.100.9", "255.255.255.255", "192.168.1.20"] {
            assert_eq!(text.format(v4.parse().unwrap()), v4);
        }
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        assert_eq!(text.format(long.parse().unwrap()), long);
    }
}
