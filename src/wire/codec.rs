//! The encoding every message is built from: integers big-endian, strings a `u16`
//! byte count and UTF-8, lists a `u32` item count and the items. [`Enc`] writes,
//! [`Dec`] reads and checks; neither knows any message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::DecodeError;
use crate::name::SharePath;

/// Builds one message's payload at the end of a buffer (which may already hold a
/// frame's length in front, or be kept from one message to the next).
pub(crate) struct Enc<'a>(&'a mut Vec<u8>);

impl<'a> Enc<'a> {
    /// A message that starts with `tag`.
    pub(crate) fn new(out: &'a mut Vec<u8>, tag: u8) -> Enc<'a> {
        out.push(tag);
        Enc(out)
    }
    /// A message that starts with `head` (the handshake's magic).
    pub(crate) fn new_after(out: &'a mut Vec<u8>, head: &[u8]) -> Enc<'a> {
        out.extend_from_slice(head);
        Enc(out)
    }
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Strings longer than a u16 can count are cut at a character boundary; only
    /// error texts and patterns could be that long, and nobody needs 64 KiB of either.
    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        let mut end = v.len().min(u16::MAX as usize);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16).bytes(&v.as_bytes()[..end])
    }
    /// A `u32` count and each item written by `item`: the mirror of [`Dec::list`].
    pub(crate) fn list<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) -> &mut Self {
        self.u32(u32::try_from(items.len()).expect("lists are bounded far below u32::MAX"));
        for x in items {
            item(self, x);
        }
        self
    }
    /// An optional `u32`: a flag byte, then the value if there is one.
    pub(crate) fn opt_u32(&mut self, v: Option<u32>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(n) => self.u8(1).u32(n),
        }
    }
    pub(crate) fn addr(&mut self, a: &SocketAddr) -> &mut Self {
        match a.ip() {
            IpAddr::V4(ip) => self.u8(4).bytes(&ip.octets()),
            IpAddr::V6(ip) => self.u8(6).bytes(&ip.octets()),
        };
        self.u16(a.port())
    }
}

/// Reads one message's payload, refusing anything short, long or malformed.
pub(crate) struct Dec<'a>(pub(crate) &'a [u8]);

impl<'a> Dec<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    /// The handshake's magic, or `BadMagic`.
    pub(crate) fn magic(&mut self, magic: &[u8]) -> Result<(), DecodeError> {
        if self.take(magic.len()).ok() == Some(magic) { Ok(()) } else { Err(DecodeError::BadMagic) }
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadEnum("boolean", v)),
        }
    }
    pub(crate) fn opt_u32(&mut self) -> Result<Option<u32>, DecodeError> {
        Ok(if self.bool()? { Some(self.u32()?) } else { None })
    }
    pub(crate) fn str(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }
    pub(crate) fn name(&mut self) -> Result<SharePath, DecodeError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        SharePath::parse(text).map_err(|why| {
            let mut shown: String = text.chars().take(64).collect();
            if shown.len() < text.len() {
                shown.push_str("...");
            }
            DecodeError::BadName(shown, why)
        })
    }
    /// A list count, refused if the remaining bytes cannot hold that many items of at
    /// least `min_item` bytes each: a count never allocates more than the frame holds.
    pub(crate) fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.checked_mul(min_item).is_none_or(|need| need > self.0.len()) {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
    /// A list written by [`Enc::list`], each item read by `item`.
    pub(crate) fn list<T>(
        &mut self,
        min_item: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count(min_item)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }
    pub(crate) fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            v => return Err(DecodeError::BadEnum("address family", v)),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    /// Checks that every byte was used, and returns `value`.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, DecodeError> {
        if self.0.is_empty() { Ok(value) } else { Err(DecodeError::TrailingBytes(self.0.len())) }
    }
}
