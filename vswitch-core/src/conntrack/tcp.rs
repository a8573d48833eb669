//! TCP tracking: the connection's state (Linux nf_conntrack's state
//! machine) and, per direction, the sequence space each side may use
//! (Guido van Rooij's "Real Stateful TCP Packet Filtering in IP Filter",
//! as Linux and Open vSwitch implement it). A segment outside the window
//! is invalid unless the zone is `liberal`.

use serde::Serialize;

use super::tuple::{Segment, flags};

/// A TCP connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
#[non_exhaustive]
pub enum TcpState {
    /// Not tracked yet.
    #[default]
    None = 0,
    /// The original direction sent a SYN.
    SynSent = 1,
    /// The reply direction answered with SYN-ACK.
    SynRecv = 2,
    /// The handshake completed.
    Established = 3,
    /// One side sent a FIN.
    FinWait = 4,
    /// The other side acknowledged it.
    CloseWait = 5,
    /// Both sides sent a FIN.
    LastAck = 6,
    /// The last FIN was acknowledged.
    TimeWait = 7,
    /// A RST was seen.
    Close = 8,
    /// A SYN answered by a SYN (simultaneous open).
    SynSent2 = 9,
}

impl TcpState {
    /// All states, in number order.
    pub const ALL: [TcpState; 10] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::SynSent2,
    ];

    pub(crate) fn from_u8(v: u8) -> TcpState {
        TcpState::ALL.get(v as usize).copied().unwrap_or(TcpState::None)
    }

    /// Its name, as `dump-conntrack` prints it.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::SynSent2 => "SYN_SENT2",
        }
    }
}

/// What the state machine makes of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    To(TcpState),
    /// Valid, but changes nothing (a retransmitted SYN-ACK, ...).
    Ignore,
    Invalid,
}

/// Which row of the transition table a segment's flags select.
fn row(f: u8) -> Option<usize> {
    let (syn, ack, fin, rst) = (f & flags::SYN != 0, f & flags::ACK != 0, f & flags::FIN != 0, f & flags::RST != 0);
    if rst {
        Some(4)
    } else if syn {
        if fin {
            None
        } else if ack {
            Some(1)
        } else {
            Some(0)
        }
    } else if fin {
        Some(2)
    } else if ack {
        Some(3)
    } else {
        None
    }
}

/// The transition for a segment in direction `reply` from state `s`
/// (Linux's `tcp_conntracks` table; rows syn, synack, fin, ack, rst).
fn transition(s: TcpState, reply: bool, f: u8) -> Next {
    use Next::{Ignore as IG, Invalid as IV};
    use TcpState::*;
    let Some(r) = row(f) else { return IV };
    #[rustfmt::skip]
    //            NONE        SYN_SENT       SYN_RECV      ESTABLISHED   FIN_WAIT      CLOSE_WAIT    LAST_ACK      TIME_WAIT     CLOSE         SYN_SENT2
    const ORIG: [[Next; 10]; 5] = [
        [Next::To(SynSent), Next::To(SynSent), IG, IG, IG, IG, IG, Next::To(SynSent), Next::To(SynSent), Next::To(SynSent2)],
        [IV, IV, Next::To(SynRecv), IV, IV, IV, IV, IV, IV, Next::To(SynRecv)],
        [IV, IV, Next::To(FinWait), Next::To(FinWait), Next::To(LastAck), Next::To(LastAck), Next::To(LastAck), Next::To(TimeWait), Next::To(Close), IV],
        [IV, IV, Next::To(Established), Next::To(Established), Next::To(CloseWait), Next::To(CloseWait), Next::To(TimeWait), Next::To(TimeWait), Next::To(Close), IV],
        [IV, Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close)],
    ];
    #[rustfmt::skip]
    const REPLY: [[Next; 10]; 5] = [
        [IV, Next::To(SynSent2), IV, IV, IV, IV, IV, Next::To(SynSent), IV, Next::To(SynSent2)],
        [IV, Next::To(SynRecv), IG, IG, IG, IG, IG, IG, IG, Next::To(SynRecv)],
        [IV, IV, Next::To(FinWait), Next::To(FinWait), Next::To(LastAck), Next::To(LastAck), Next::To(LastAck), Next::To(TimeWait), Next::To(Close), IV],
        [IV, IG, Next::To(SynRecv), Next::To(Established), Next::To(CloseWait), Next::To(CloseWait), Next::To(TimeWait), Next::To(TimeWait), Next::To(Close), IG],
        [IV, Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close), Next::To(Close)],
    ];
    if reply { REPLY[r][s as usize] } else { ORIG[r][s as usize] }
}

/// One direction's sequence space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Side {
    /// Highest sequence number sent plus its length.
    pub end: u32,
    /// Highest acknowledgement plus window the peer allowed.
    pub maxend: u32,
    /// Largest window advertised (scaled).
    pub maxwin: u32,
    /// Window scale (14 at most).
    pub scale: u8,
    /// The side sent the window-scale option.
    pub scale_ok: bool,
}

impl Side {
    /// Packs the side into two words.
    pub(crate) fn to_words(self) -> (u64, u64) {
        (
            self.end as u64 | (self.maxend as u64) << 32,
            self.maxwin as u64 | (self.scale as u64) << 32 | (self.scale_ok as u64) << 40,
        )
    }

    pub(crate) fn from_words(a: u64, b: u64) -> Side {
        Side {
            end: a as u32,
            maxend: (a >> 32) as u32,
            maxwin: b as u32,
            scale: (b >> 32) as u8,
            scale_ok: b >> 40 & 1 == 1,
        }
    }
}

/// A TCP connection's tracking state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tcp {
    pub state: TcpState,
    /// Original direction, reply direction.
    pub sides: [Side; 2],
}

#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// The sequence number just past a segment (SYN and FIN count one).
fn seg_end(s: &Segment) -> u32 {
    s.seq
        .wrapping_add(s.len)
        .wrapping_add((s.flags & flags::SYN != 0) as u32)
        .wrapping_add((s.flags & flags::FIN != 0) as u32)
}

/// How the first segment of a connection is judged.
pub(crate) fn can_open(s: &Segment) -> bool {
    s.flags & (flags::SYN | flags::ACK | flags::RST | flags::FIN) == flags::SYN
}

impl Tcp {
    /// The state after the connection's first segment (a SYN).
    pub(crate) fn opened_by(s: &Segment) -> Tcp {
        let end = seg_end(s);
        let side = Side {
            end,
            maxend: end,
            maxwin: (s.win as u32).max(1),
            scale: s.wscale.unwrap_or(0),
            scale_ok: s.wscale.is_some(),
        };
        Tcp { state: TcpState::SynSent, sides: [side, Side::default()] }
    }

    /// Checks segment `s` sent in direction `reply` and, if it is
    /// acceptable, moves the state on. `liberal` skips the window checks.
    /// Returns false for an invalid segment (the state is unchanged).
    pub(crate) fn update(&mut self, s: &Segment, reply: bool, liberal: bool) -> bool {
        let next = match transition(self.state, reply, s.flags) {
            Next::Invalid => return false,
            // Valid but of no consequence (a retransmitted SYN-ACK, a SYN
            // on an established connection): no window check, no change,
            // as Linux does.
            Next::Ignore => return true,
            Next::To(st) => st,
        };
        let mut copy = *self;
        if !copy.in_window(s, reply) && !liberal {
            return false;
        }
        copy.state = next;
        *self = copy;
        true
    }

    /// The window checks, updating the sides when they pass.
    fn in_window(&mut self, s: &Segment, reply: bool) -> bool {
        let (si, ri) = if reply { (1, 0) } else { (0, 1) };
        let syn = s.flags & flags::SYN != 0;
        let has_ack = s.flags & flags::ACK != 0;
        let end = seg_end(s);
        let mut win = s.win as u32;
        {
            let [a, b] = &mut self.sides;
            let (sender, receiver) = if reply { (b, a) } else { (a, b) };
            if sender.maxwin == 0 {
                // The first segment seen from this side.
                if syn {
                    sender.end = end;
                    sender.maxend = end;
                    sender.maxwin = win.max(1);
                    sender.scale = s.wscale.unwrap_or(0);
                    sender.scale_ok = s.wscale.is_some();
                    if !(sender.scale_ok && receiver.scale_ok) {
                        sender.scale = 0;
                        receiver.scale = 0;
                    }
                    if !has_ack {
                        return true;
                    }
                } else {
                    sender.end = end;
                    let swin = (win << sender.scale).max(1);
                    sender.maxwin = swin;
                    sender.maxend = end.wrapping_add(swin);
                    if receiver.maxwin == 0 {
                        receiver.end = s.ack;
                        receiver.maxend = s.ack;
                    }
                }
            }
        }
        let (sender, receiver) = (self.sides[si], self.sides[ri]);
        let ack = if has_ack { s.ack } else { receiver.end };
        if !syn {
            win <<= sender.scale;
        }
        let max_ack_window = if sender.maxwin > 0 { sender.maxwin.max(66_000) } else { 66_000 };
        let ok = before(s.seq, sender.maxend.wrapping_add(1))
            && after(end, sender.end.wrapping_sub(receiver.maxwin).wrapping_sub(1))
            && before(ack, receiver.end.wrapping_add(1))
            && after(ack, receiver.end.wrapping_sub(max_ack_window).wrapping_sub(1));
        // (A RST is held to the same window as data: its sequence number
        // is in the sender's space, so the first two checks bound it.)
        if !ok {
            return false;
        }
        let sender = &mut self.sides[si];
        sender.maxwin = sender.maxwin.max(win.max(1));
        if after(end, sender.end) {
            sender.end = end;
        }
        if has_ack {
            let receiver = &mut self.sides[ri];
            let right = ack.wrapping_add(win.max(1));
            if after(right, receiver.maxend.wrapping_sub(1)) {
                receiver.maxend = right;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flags::*;

    fn seg(flags: u8, seq: u32, ack: u32, len: u32) -> Segment {
        Segment { flags, seq, ack, win: 65535, len, wscale: None }
    }

    /// A three-way handshake, data both ways, and a FIN exchange.
    #[test]
    fn a_whole_connection() {
        let syn = seg(SYN, 1000, 0, 0);
        assert!(can_open(&syn));
        let mut t = Tcp::opened_by(&syn);
        let steps: &[(bool, Segment, TcpState)] = &[
            (true, seg(SYN | ACK, 5000, 1001, 0), TcpState::SynRecv),
            (false, seg(ACK, 1001, 5001, 0), TcpState::Established),
            (false, seg(ACK, 1001, 5001, 100), TcpState::Established),
            (true, seg(ACK, 5001, 1101, 200), TcpState::Established),
            (false, seg(FIN | ACK, 1101, 5201, 0), TcpState::FinWait),
            (true, seg(ACK, 5201, 1102, 0), TcpState::CloseWait),
            (true, seg(FIN | ACK, 5201, 1102, 0), TcpState::LastAck),
            (false, seg(ACK, 1102, 5202, 0), TcpState::TimeWait),
        ];
        for (i, (reply, s, want)) in steps.iter().enumerate() {
            assert!(t.update(s, *reply, false), "step {i} refused");
            assert_eq!(t.state, *want, "after step {i}");
        }
    }

    /// The transition table against the cases the tests of a stateful
    /// firewall rely on.
    #[test]
    fn transitions() {
        use TcpState::*;
        let cases: &[(TcpState, bool, u8, Next)] = &[
            (SynSent, true, SYN | ACK, Next::To(SynRecv)),
            (SynSent, false, ACK, Next::Invalid),
            (SynSent, true, ACK, Next::Ignore),
            (SynRecv, false, ACK, Next::To(Established)),
            (Established, false, SYN, Next::Ignore),
            (Established, true, RST, Next::To(Close)),
            (Established, false, FIN, Next::To(FinWait)),
            (TimeWait, false, SYN, Next::To(SynSent)),
            (None, true, SYN, Next::Invalid),
            (Established, false, SYN | FIN, Next::Invalid),
            (Established, false, 0, Next::Invalid),
            (SynSent, true, SYN, Next::To(SynSent2)),
        ];
        for &(s, reply, f, want) in cases {
            assert_eq!(transition(s, reply, f), want, "{s:?} reply={reply} flags={f:#x}");
        }
    }

    #[test]
    fn out_of_window_segments_are_refused_unless_liberal() {
        let mut t = Tcp::opened_by(&seg(SYN, 1000, 0, 0));
        assert!(t.update(&seg(SYN | ACK, 5000, 1001, 0), true, false));
        assert!(t.update(&seg(ACK, 1001, 5001, 0), false, false));
        // A RST far outside the window.
        let far = seg(RST | ACK, 5001u32.wrapping_add(10_000_000), 1001, 0);
        let before = t;
        assert!(!t.update(&far, true, false));
        assert_eq!(t, before, "an invalid segment changes nothing");
        // Data acknowledging bytes never sent.
        assert!(!t.update(&seg(ACK, 5001, 900_000, 0), true, false));
        // A liberal zone lets both through.
        assert!(t.update(&seg(ACK, 5001, 900_000, 0), true, true));
        // A RST at the expected sequence number closes it.
        let mut u = before;
        assert!(u.update(&seg(RST, 5001, 0, 0), true, false));
        assert_eq!(u.state, TcpState::Close);
    }

    /// RSTs are judged in the sender's own sequence space, whatever the two
    /// initial sequence numbers are.
    #[test]
    fn rsts_with_distant_isns_and_refusals() {
        for (c, srv) in [(0x1000_0000u32, 0xf000_0000u32), (0xf000_0000, 0x1000_0000), (5, 5)] {
            let mut t = Tcp::opened_by(&seg(SYN, c, 0, 0));
            assert!(t.update(&seg(SYN | ACK, srv, c + 1, 0), true, false));
            assert!(t.update(&seg(ACK, c + 1, srv + 1, 0), false, false));
            let mut from_server = t;
            assert!(from_server.update(&seg(RST | ACK, srv + 1, c + 1, 0), true, false), "isn {c:#x}/{srv:#x}");
            assert_eq!(from_server.state, TcpState::Close);
            assert!(t.update(&seg(RST, c + 1, 0, 0), false, false), "the client's RST, isn {c:#x}/{srv:#x}");
            // A SYN to a closed port answered by RST+ACK with sequence 0.
            let mut refused = Tcp::opened_by(&seg(SYN, c, 0, 0));
            assert!(refused.update(&seg(RST | ACK, 0, c + 1, 0), true, false), "refusal, isn {c:#x}");
            assert_eq!(refused.state, TcpState::Close);
        }
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut t = Tcp::opened_by(&seg(SYN, u32::MAX - 10, 0, 0));
        assert!(t.update(&seg(SYN | ACK, 7, u32::MAX - 9, 0), true, false));
        assert!(t.update(&seg(ACK, u32::MAX - 9, 8, 0), false, false));
        assert!(t.update(&seg(ACK, u32::MAX - 9, 8, 1000), false, false));
        assert!(t.update(&seg(ACK, 8, 990, 0), true, false));
        assert_eq!(t.state, TcpState::Established);
    }

    #[test]
    fn sides_pack_into_words() {
        let s = Side { end: 1, maxend: u32::MAX, maxwin: 77, scale: 14, scale_ok: true };
        let (a, b) = s.to_words();
        assert_eq!(Side::from_words(a, b), s);
    }
}
