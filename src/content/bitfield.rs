//! Which pieces of a file are held: one bit per piece, the first piece in the high bit
//! of the first byte, as BitTorrent lays it out. Spare bits at the end are zero.

use std::fmt;

/// A set of piece numbers below a fixed count.
#[derive(Clone, PartialEq, Eq)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
}

impl Bitfield {
    /// No piece of `len`.
    pub fn empty(len: u32) -> Bitfield {
        Bitfield { bytes: vec![0; (len as usize).div_ceil(8)], len }
    }

    /// Every piece of `len`.
    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield { bytes: vec![0xff; (len as usize).div_ceil(8)], len };
        b.clear_spare();
        b
    }

    /// The bitfield of `len` pieces in `bytes`; `None` if there are not exactly enough
    /// bytes or a spare bit is set.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Bitfield> {
        let b = Bitfield { bytes: bytes.to_vec(), len };
        let mut cleared = b.clone();
        cleared.clear_spare();
        (bytes.len() == (len as usize).div_ceil(8) && cleared == b).then_some(b)
    }

    fn clear_spare(&mut self) {
        let spare = (8 - self.len % 8) % 8;
        if let Some(last) = self.bytes.last_mut() {
            *last &= 0xffu8 << spare;
        }
    }

    /// The bits as bytes, for the wire or a file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many pieces it can hold.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Does it hold no piece?
    pub fn is_empty(&self) -> bool {
        self.bytes.iter().all(|&b| b == 0)
    }

    /// Does it hold every piece?
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// Pieces held.
    pub fn count(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// Is piece `i` held? False past the end.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Marks piece `i` held. Panics past the end.
    pub fn set(&mut self, i: u32) {
        assert!(i < self.len, "piece {i} of {}", self.len);
        self.bytes[(i / 8) as usize] |= 0x80 >> (i % 8);
    }

    /// Marks piece `i` not held.
    pub fn unset(&mut self, i: u32) {
        if i < self.len {
            self.bytes[(i / 8) as usize] &= !(0x80 >> (i % 8));
        }
    }

    /// The pieces not held.
    pub fn complement(&self) -> Bitfield {
        let mut b = Bitfield { bytes: self.bytes.iter().map(|b| !b).collect(), len: self.len };
        b.clear_spare();
        b
    }

    /// The pieces held, in order.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.count(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complement_holds_exactly_the_other_pieces_and_no_spare_bit() {
        let mut b = Bitfield::empty(11);
        b.set(0);
        b.set(9);
        let c = b.complement();
        assert_eq!(c.ones().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7, 8, 10]);
        assert_eq!(Bitfield::from_bytes(11, c.as_bytes()), Some(c.clone()), "spare bits stay zero");
        assert_eq!(c.complement(), b);
        assert!(Bitfield::empty(11).complement().is_full());
    }

    #[test]
    fn bits_are_laid_out_high_bit_first() {
        let mut b = Bitfield::empty(10);
        b.set(0);
        b.set(9);
        assert_eq!(b.as_bytes(), [0x80, 0x40]);
        assert!(b.get(0) && b.get(9) && !b.get(1) && !b.get(10));
        assert_eq!((b.count(), b.ones().collect::<Vec<_>>()), (2, vec![0, 9]));
        b.unset(0);
        assert_eq!(b.as_bytes(), [0, 0x40]);
        assert_eq!(Bitfield::full(10).as_bytes(), [0xff, 0xc0]);
        assert!(Bitfield::full(10).is_full() && Bitfield::empty(3).is_empty());
    }

    #[test]
    fn bytes_from_the_wire_are_checked() {
        assert_eq!(Bitfield::from_bytes(10, &[0xff, 0xc0]), Some(Bitfield::full(10)));
        assert_eq!(Bitfield::from_bytes(10, &[0xff, 0xe0]), None, "a spare bit set");
        assert_eq!(Bitfield::from_bytes(10, &[0xff]), None, "too short");
        assert_eq!(Bitfield::from_bytes(8, &[0xff, 0]), None, "too long");
        assert_eq!(Bitfield::from_bytes(0, &[]), Some(Bitfield::empty(0)));
    }
}
