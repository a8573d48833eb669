//! vhost-user ports driven by the rust-vmm frontend (`vhost`'s
//! `Frontend`, which VMMs built on rust-vmm use) with real split
//! virtqueues in file-backed shared memory, the way a VMM and its guest's
//! virtio-net driver drive them: the guest side here posts receive
//! buffers and transmit descriptors and kicks; the switch's port thread
//! moves the frames. No root needed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::Frontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vswitch_core::events::Event;
use vswitch_core::port::vhost_user::VhostUserConfig;
use vswitch_core::{MemoryPortHandle, PortConfig, PortState, Switch};
use vswitch_tests::{frame, mac, recv_n};

const WAIT: Duration = Duration::from_secs(10);
const QUEUE: u16 = 256;
const MEM_SIZE: usize = 4 << 20;
/// Receive buffers are smaller than a full frame, so merged receive
/// buffers are exercised.
const RX_BUF: u32 = 1024;
const TX_BUF: u64 = 2048;
const HDR: usize = 12;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;

/// Where queue `q`'s rings live (guest physical addresses).
fn desc(q: u64) -> u64 {
    0x10000 * q
}
fn avail(q: u64) -> u64 {
    0x10000 * q + 0x1000
}
fn used(q: u64) -> u64 {
    0x10000 * q + 0x2000
}
fn rx_buf(i: u64) -> u64 {
    0x40000 + i * u64::from(RX_BUF)
}
fn tx_buf(i: u64) -> u64 {
    0x100000 + i * TX_BUF
}

/// A VMM's side of a vhost-user net device: its guest memory, and the
/// guest driver's view of the two queues.
struct Guest {
    frontend: Frontend,
    mem: GuestMemoryMmap,
    kick: [EventFd; 2],
    call: [EventFd; 2],
    rx_used_seen: u16,
    rx_avail: u16,
    tx_avail: u16,
    tx_used_seen: u16,
    _file: PathBuf,
}

impl Guest {
    /// A VMM connects and sets the device up, and its guest's driver
    /// starts (posts receive buffers and kicks).
    fn connect(socket: &Path, dir: &Path, n: u32) -> Guest {
        let mut g = Guest::handshake(socket, dir, n);
        g.set_up_queues();
        g.start();
        g
    }

    /// A VMM connects, negotiates features and hands over the guest's
    /// memory; its queues are not set up yet.
    fn handshake(socket: &Path, dir: &Path, n: u32) -> Guest {
        let path = dir.join(format!("guest-mem-{n}"));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(MEM_SIZE as u64).unwrap();
        let mem =
            GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), MEM_SIZE, Some(FileOffset::new(file, 0)))])
                .unwrap();
        let frontend = Frontend::connect(socket, 2).expect("connect to the switch's vhost-user socket");
        frontend.set_owner().unwrap();
        let offered = frontend.get_features().unwrap();
        assert_eq!(
            offered & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF),
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF
        );
        frontend.set_features(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF).unwrap();
        let region = VhostUserMemoryRegionInfo::from_guest_region(mem.iter().next().unwrap()).unwrap();
        frontend.set_mem_table(&[region]).unwrap();
        let kick = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        let call = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        Guest { frontend, mem, kick, call, rx_used_seen: 0, rx_avail: 0, tx_avail: 0, tx_used_seen: 0, _file: path }
    }

    /// The VMM sets the queues up: sizes, addresses, eventfds. Without
    /// protocol features, a queue is enabled once it has its kick
    /// descriptor.
    fn set_up_queues(&mut self) {
        let (frontend, mem) = (&mut self.frontend, &self.mem);
        let hva = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
        for q in 0..2usize {
            let qa = q as u64;
            frontend.set_vring_num(q, QUEUE).unwrap();
            let config = VringConfigData {
                queue_max_size: QUEUE,
                queue_size: QUEUE,
                flags: 0,
                desc_table_addr: hva(desc(qa)),
                used_ring_addr: hva(used(qa)),
                avail_ring_addr: hva(avail(qa)),
                log_addr: None,
            };
            frontend.set_vring_addr(q, &config).unwrap();
            frontend.set_vring_base(q, 0).unwrap();
            frontend.set_vring_call(q, &self.call[q]).unwrap();
            frontend.set_vring_kick(q, &self.kick[q]).unwrap();
        }
    }

    /// The guest's driver starts: every receive buffer is offered once
    /// (each one used is offered again as it is read), and it kicks.
    fn start(&mut self) {
        for i in 0..QUEUE {
            self.offer_rx(i);
        }
        self.kick(0);
    }

    fn w16(&self, gpa: u64, v: u16) {
        self.mem.write_obj(v, GuestAddress(gpa)).unwrap();
    }

    fn r16(&self, gpa: u64) -> u16 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    fn r32(&self, gpa: u64) -> u32 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    fn write_desc(&self, q: u64, i: u16, addr: u64, len: u32, flags: u16) {
        let at = desc(q) + 16 * u64::from(i);
        self.mem.write_obj(addr, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.w16(at + 12, flags);
        self.w16(at + 14, 0);
    }

    /// Puts descriptor `i` on the queue's available ring.
    fn publish(&mut self, q: u64, i: u16) {
        let idx = if q == 0 { &mut self.rx_avail } else { &mut self.tx_avail };
        let slot = avail(q) + 4 + 2 * u64::from(*idx % QUEUE);
        *idx = idx.wrapping_add(1);
        let next = *idx;
        self.w16(slot, i);
        fence(Ordering::SeqCst);
        self.w16(avail(q) + 2, next);
        fence(Ordering::SeqCst);
    }

    fn offer_rx(&mut self, i: u16) {
        self.write_desc(0, i, rx_buf(u64::from(i)), RX_BUF, VIRTQ_DESC_F_WRITE);
        self.publish(0, i);
    }

    fn kick(&self, q: usize) {
        self.kick[q].write(1).unwrap();
    }

    /// The guest transmits `frames`, one descriptor each (a zero header
    /// in front), and waits until the device has used them all.
    fn send(&mut self, frames: &[Vec<u8>]) {
        for f in frames {
            let i = self.tx_avail % QUEUE;
            let addr = tx_buf(u64::from(i));
            self.mem.write_slice(&[0u8; HDR], GuestAddress(addr)).unwrap();
            self.mem.write_slice(f, GuestAddress(addr + HDR as u64)).unwrap();
            self.write_desc(1, i, addr, (HDR + f.len()) as u32, 0);
            self.publish(1, i);
        }
        self.kick(1);
        let want = self.tx_used_seen.wrapping_add(frames.len() as u16);
        let deadline = Instant::now() + WAIT;
        while self.r16(used(1) + 2) != want {
            assert!(Instant::now() < deadline, "the device did not use the transmitted descriptors");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.tx_used_seen = want;
    }

    /// The guest transmits `frame` without waiting for the device to use
    /// it (it waits only for a free slot), as a driver with a full queue
    /// of work does.
    fn post(&mut self, frame: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while self.tx_avail.wrapping_sub(self.r16(used(1) + 2)) >= QUEUE {
            assert!(Instant::now() < deadline, "the device did not use the transmit queue");
            std::thread::yield_now();
        }
        let i = self.tx_avail % QUEUE;
        let addr = tx_buf(u64::from(i));
        self.mem.write_slice(&[0u8; HDR], GuestAddress(addr)).unwrap();
        self.mem.write_slice(frame, GuestAddress(addr + HDR as u64)).unwrap();
        self.write_desc(1, i, addr, (HDR + frame.len()) as u32, 0);
        self.publish(1, i);
        self.kick(1);
    }

    /// The frames the device has put in receive buffers, each with the
    /// number of buffers it spans; the buffers are offered again.
    fn receive(&mut self, n: usize) -> Vec<(Vec<u8>, u16)> {
        let deadline = Instant::now() + WAIT;
        let mut frames = Vec::new();
        while frames.len() < n {
            match self.poll_frame() {
                Some(f) => frames.push(f),
                None => {
                    assert!(Instant::now() < deadline, "received {} of {n} frames", frames.len());
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        frames
    }

    /// The next frame the device has put in receive buffers, if any.
    fn poll_frame(&mut self) -> Option<(Vec<u8>, u16)> {
        fence(Ordering::SeqCst);
        if self.r16(used(0) + 2) == self.rx_used_seen {
            return None;
        }
        // The first buffer of a frame: header, then the frame; more
        // buffers follow as `num_buffers` says.
        let deadline = Instant::now() + WAIT;
        let (id, len) = self.next_used();
        let first = self.read_buf(id, len);
        let buffers = u16::from_le_bytes([first[10], first[11]]);
        let mut data = first[HDR..].to_vec();
        for _ in 1..buffers {
            while self.r16(used(0) + 2) == self.rx_used_seen {
                assert!(Instant::now() < deadline, "a merged frame's next buffer did not come");
                std::thread::sleep(Duration::from_millis(1));
            }
            let (id, len) = self.next_used();
            data.extend(self.read_buf(id, len));
        }
        self.kick(0);
        Some((data, buffers))
    }

    fn next_used(&mut self) -> (u16, u32) {
        let at = used(0) + 4 + 8 * u64::from(self.rx_used_seen % QUEUE);
        self.rx_used_seen = self.rx_used_seen.wrapping_add(1);
        (self.r32(at) as u16, self.r32(at + 4))
    }

    fn read_buf(&mut self, id: u16, len: u32) -> Vec<u8> {
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(rx_buf(u64::from(id)))).unwrap();
        self.offer_rx(id);
        buf
    }
}

/// Frame `seq` from the guest (MAC 2) to the peer (MAC 1), `len` bytes.
fn sized(dst: u16, src: u16, seq: u32, len: usize) -> Vec<u8> {
    let mut f = frame(mac(dst), mac(src), seq);
    f.resize(len, 0);
    for (i, b) in f.iter_mut().enumerate().skip(18) {
        *b = (i as u32 ^ seq) as u8;
    }
    f
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_state(sw: &Switch, want: PortState) {
    let deadline = Instant::now() + WAIT;
    while sw.health().port("vm").unwrap().state != want {
        assert!(Instant::now() < deadline, "the vm port did not become {want:?}: {:?}", sw.health().port("vm"));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Frames both ways between the guest and `peer`, all whole and in order.
fn exchange(guest: &mut Guest, peer: &MemoryPortHandle, rounds: u32) {
    for round in 0..rounds {
        let lens = [60usize, 600, 1514];
        let out: Vec<Vec<u8>> = (0..30).map(|i| sized(1, 2, round * 100 + i, lens[i as usize % 3])).collect();
        guest.send(&out);
        let got: Vec<Vec<u8>> = recv_n(peer, out.len(), WAIT).iter().map(|p| p.data().to_vec()).collect();
        assert_eq!(got, out, "the guest's frames reached the peer whole, in order");

        let back: Vec<Vec<u8>> = (0..30).map(|i| sized(2, 1, round * 100 + i, lens[i as usize % 3])).collect();
        for f in &back {
            peer.send_frame(f).unwrap();
        }
        let got = guest.receive(back.len());
        for ((data, buffers), want) in got.iter().zip(&back) {
            assert_eq!(data, want, "the peer's frame reached the guest whole");
            let expect = (HDR + want.len()).div_ceil(RX_BUF as usize) as u16;
            assert_eq!(*buffers, expect, "a {}-byte frame spans {expect} receive buffers", want.len());
        }
    }
}

#[test]
fn a_rust_vmm_frontend_moves_frames_through_a_vhost_user_port_and_reconnects() {
    let dir = TempDir(std::env::temp_dir().join(format!("vsw-vu-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let socket = dir.0.join("vm.sock");
    let sw = Switch::builder().build().unwrap();
    let events = sw.subscribe().unwrap();
    sw.add_bridge("br0").unwrap();
    let peer = sw.add_memory_port("br0", "peer", PortConfig::default()).unwrap();
    sw.add_vhost_user_port("br0", "vm", &VhostUserConfig::server(&socket), PortConfig::default()).unwrap();
    assert!(socket.exists());
    wait_state(&sw, PortState::LinkDown);
    // A live socket is not taken over by another port.
    let taken = sw.add_vhost_user_port("br0", "vm-again", &VhostUserConfig::server(&socket), PortConfig::default());
    assert_eq!(taken.unwrap_err().kind(), vswitch_core::ErrorKind::Exists);

    let mut guest = Guest::connect(&socket, &dir.0, 1);
    wait_state(&sw, PortState::Up);
    exchange(&mut guest, &peer, 5);
    let stats = sw.stats();
    let vm = stats.port("vm").unwrap();
    assert_eq!((vm.rx_packets, vm.tx_packets), (150, 150), "{vm:?}");
    assert_eq!(vm.total_drops(), 0, "{vm:?}");

    // The VMM goes away: the link goes down; another connects and is
    // served (a fresh device: new memory, queues from zero).
    drop(guest);
    wait_state(&sw, PortState::LinkDown);
    // The link comes up when the queues are enabled, not when the VMM
    // connects.
    let mut guest = Guest::handshake(&socket, &dir.0, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sw.health().port("vm").unwrap().state, PortState::LinkDown, "up before the queues were");
    guest.set_up_queues();
    wait_state(&sw, PortState::Up);
    guest.start();
    exchange(&mut guest, &peer, 2);
    // The guest reboots with its VMM still connected: the VMM stops the
    // queues, and the link goes down.
    for q in 0..2 {
        guest.frontend.get_vring_base(q).unwrap();
    }
    wait_state(&sw, PortState::LinkDown);
    let mut links = Vec::new();
    while let Some(e) = events.try_recv() {
        if let Event::LinkChanged { port, up, .. } = e
            && port == "vm"
        {
            links.push(up);
        }
    }
    assert_eq!(links, [true, false, true, false], "the link followed the connections and the queues");

    // Removing the port ends the connection and removes the socket.
    sw.del_port("vm").unwrap();
    assert!(!socket.exists());
    let _ = guest.frontend.get_features().expect_err("the connection is closed");
}

/// The guest's answer to `f`, if it is an ARP request for `ip` or an ICMP
/// echo request to it: what a guest's stack would send back.
fn answer(f: &[u8], mac: [u8; 6], ip: [u8; 4]) -> Option<Vec<u8>> {
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    if ethertype == 0x0806 && f.len() >= 42 && f[20..22] == [0, 1] && f[38..42] == ip {
        let mut r = f[..42].to_vec();
        r[0..6].copy_from_slice(&f[6..12]);
        r[6..12].copy_from_slice(&mac);
        r[21] = 2;
        r[22..28].copy_from_slice(&mac);
        r[28..32].copy_from_slice(&ip);
        r[32..38].copy_from_slice(&f[22..28]);
        r[38..42].copy_from_slice(&f[28..32]);
        return Some(r);
    }
    let ihl = usize::from(*f.get(14)? & 0x0f) * 4;
    if ethertype == 0x0800 && f.len() >= 14 + ihl + 8 && f[23] == 1 && f[30..34] == ip && f[14 + ihl] == 8 {
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let mut r = f[..14 + total].to_vec();
        r[0..6].copy_from_slice(&f[6..12]);
        r[6..12].copy_from_slice(&mac);
        r[26..30].copy_from_slice(&f[30..34]);
        r[30..34].copy_from_slice(&f[26..30]);
        // Swapping the addresses leaves the IP checksum as it is.
        let icmp = 14 + ihl;
        r[icmp] = 0;
        r[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
        let sum = !ones_complement(&r[icmp..]);
        r[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
        return Some(r);
    }
    None
}

fn ones_complement(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A namespace behind a veth (its end at `addr`) and a guest on a
/// vhost-user port `vm`, on one bridge; the guest's driver running.
struct NamespaceAndGuest {
    guest: Guest,
    sw: Switch,
    veth: vswitch_tests::netns::Veth,
    ns: vswitch_tests::netns::NetNs,
    _dir: TempDir,
}

fn namespace_and_guest(addr: &str, tag: &str) -> NamespaceAndGuest {
    use vswitch_tests::netns::{NetNs, Veth};
    let ns = NetNs::new();
    let veth = Veth::new(&ns, addr);
    let dir = TempDir(std::env::temp_dir().join(format!("vsw-vu-{tag}-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let socket = dir.0.join("vm.sock");
    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    sw.add_afpacket_port("br0", &veth.host, PortConfig::default()).unwrap();
    sw.add_vhost_user_port("br0", "vm", &VhostUserConfig::server(&socket), PortConfig::default()).unwrap();
    let guest = Guest::connect(&socket, &dir.0, 1);
    wait_state(&sw, PortState::Up);
    NamespaceAndGuest { guest, sw, veth, ns, _dir: dir }
}

#[test]
fn a_namespace_pings_a_guest_behind_a_vhost_user_port() {
    let mut env = namespace_and_guest("10.95.0.1/24", "ping");
    let (guest, ns) = (&mut env.guest, &env.ns);

    // The guest's side answers ARP and echo requests for 10.95.0.2, as
    // its stack would, while the namespace pings it.
    let (mac, ip) = ([0x52, 0x54, 0, 0x95, 0, 2], [10, 95, 0, 2]);
    let mut ping = ns.spawn(&["ping", "-c", "5", "-i", "0.2", "-W", "2", "10.95.0.2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answered = 0;
    let status = loop {
        if let Some(status) = ping.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ping did not finish");
        match guest.poll_frame() {
            Some((f, _)) => {
                if let Some(reply) = answer(&f, mac, ip) {
                    guest.send(&[reply]);
                    answered += 1;
                }
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let out = ping.wait_with_output().unwrap();
    assert!(status.success(), "the namespace's pings were answered: {}", String::from_utf8_lossy(&out.stdout));
    assert!(answered >= 6, "an ARP reply and five echo replies went back through the port ({answered})");
}

/// The guest's virtio-net driver as a smoltcp device, for a TCP stack on
/// top of the virtqueues.
struct GuestNic<'a>(&'a mut Guest);

struct GuestRx(Vec<u8>);

struct GuestTx<'a>(&'a mut Guest);

impl smoltcp::phy::RxToken for GuestRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for GuestTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.post(&frame);
        r
    }
}

impl smoltcp::phy::Device for GuestNic<'_> {
    type RxToken<'b>
        = GuestRx
    where
        Self: 'b;
    type TxToken<'b>
        = GuestTx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(GuestRx, GuestTx<'_>)> {
        let (frame, _) = self.0.poll_frame()?;
        Some((GuestRx(frame), GuestTx(self.0)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<GuestTx<'_>> {
        Some(GuestTx(self.0))
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        let mut caps = smoltcp::phy::DeviceCapabilities::default();
        caps.medium = smoltcp::phy::Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// A smoltcp stack on the guest's virtqueues at `ip` (MAC `mac`): it
/// connects to `server`, sends `total` bytes and checks every byte that
/// comes back, then closes and keeps its stack going (for `linger` at
/// most) until both ends have.
fn tcp_echo(guest: &mut Guest, mac: [u8; 6], ip: [u8; 4], server: ([u8; 4], u16), total: usize, linger: Duration) {
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::socket::tcp;
    use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

    let byte = |i: usize| (i.wrapping_mul(2_654_435_761) >> 11) as u8;
    let mut nic = GuestNic(guest);
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = u64::from(ip[3]);
    let mut iface = Interface::new(config, &mut nic, smoltcp::time::Instant::now());
    iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(ip)), 24)).unwrap());
    let tcp =
        tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 256 * 1024]), tcp::SocketBuffer::new(vec![0; 256 * 1024]));
    let mut sockets = SocketSet::new(Vec::new());
    let h = sockets.add(tcp);
    let (mut sent, mut echoed, mut connected) = (0usize, 0usize, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while echoed < total {
        assert!(Instant::now() < deadline, "the stream stalled: {sent} bytes sent, {echoed} echoed");
        let now = smoltcp::time::Instant::now();
        iface.poll(now, &mut nic, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket<'static>>(h);
        if !connected {
            s.connect(iface.context(), (Ipv4Address::from(server.0), server.1), 49152).unwrap();
            connected = true;
        }
        while sent < total && s.can_send() {
            sent += s
                .send(|buf| {
                    let n = buf.len().min(total - sent);
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        *b = byte(sent + i);
                    }
                    (n, n)
                })
                .unwrap();
        }
        while s.can_recv() {
            echoed += s
                .recv(|buf| {
                    for (i, &b) in buf.iter().enumerate() {
                        assert_eq!(b, byte(echoed + i), "echoed byte {}", echoed + i);
                    }
                    (buf.len(), buf.len())
                })
                .unwrap();
        }
        if iface.poll_delay(now, &sockets).is_some_and(|d| d.total_micros() > 0) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    sockets.get_mut::<tcp::Socket<'static>>(h).close();
    let until = Instant::now() + linger;
    while Instant::now() < until {
        iface.poll(smoltcp::time::Instant::now(), &mut nic, &mut sockets);
        if matches!(sockets.get::<tcp::Socket<'static>>(h).state(), tcp::State::Closed | tcp::State::TimeWait) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A TCP stream both ways between a namespace's kernel and a smoltcp
/// stack on the guest's virtqueues. The guest negotiated no offloads, so
/// the switch must cut the kernel's TSO super-frames (from veth, through
/// AF_PACKET) into MTU-sized segments and finish their checksums for it:
/// smoltcp checks every checksum and drops what is wrong, so a bad one
/// stalls the stream.
#[test]
fn a_guest_behind_a_vhost_user_port_and_a_namespace_exchange_tcp() {
    use std::io::BufRead;

    const TOTAL: usize = 4 * 1024 * 1024;
    let mut env = namespace_and_guest("10.95.1.1/24", "tcp");
    let (guest, sw, veth, ns) = (&mut env.guest, &env.sw, &env.veth, &env.ns);

    // The namespace's end: a kernel TCP socket that echoes what it reads.
    const ECHO: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.95.1.1", 7001))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    c.sendall(d)
    n += len(d)
c.close()
print("echoed", n, flush=True)
"#;
    let mut server = ns.spawn(&["python3", "-c", ECHO]);
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if line.trim() != "listening" {
        let err = server.wait_with_output().unwrap().stderr;
        panic!("the echo server did not start: {}", String::from_utf8_lossy(&err));
    }
    tcp_echo(guest, [0x52, 0x54, 0, 0x95, 1, 2], [10, 95, 1, 2], ([10, 95, 1, 1], 7001), TOTAL, WAIT);
    let status = server.wait().unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(status.success(), "the echo server failed");
    assert_eq!(line.trim(), format!("echoed {TOTAL}"));

    let stats = sw.stats();
    let vm = stats.port("vm").unwrap();
    assert_eq!(vm.total_drops(), 0, "{vm:?}");
    // Fewer frames reached the AF_PACKET port than left the guest's: the
    // kernel sent super-frames that the switch cut for the guest.
    let host = stats.port(&veth.host).unwrap();
    assert!(host.rx_packets < vm.tx_packets, "the namespace's TSO frames arrived whole: {host:?} {vm:?}");
}

#[allow(dead_code)]
#[path = "../examples/vmm.rs"]
mod vmm;

/// The VMM example as a test: a guest on its first VM's socket reaches
/// the gateway over TCP, reboots (its VMM reconnects) and does again; the
/// program then stops cleanly and takes its sockets with it.
#[test]
fn the_vmm_example_serves_a_guest_across_a_reconnect() {
    let dir = TempDir(std::env::temp_dir().join(format!("vsw-vmm-{}", std::process::id())));
    let opts = vmm::Options { vms: 2, dir: dir.0.clone(), uplink: None };
    let stop = Arc::new(AtomicBool::new(false));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (stop2, lines2) = (stop.clone(), lines.clone());
    let vmm = std::thread::spawn(move || vmm::run(&opts, stop2, |l| lines2.lock().unwrap().push(l)));
    let socket = dir.0.join("vm1.sock");
    let deadline = Instant::now() + WAIT;
    while !socket.exists() || !dir.0.join("vm2.sock").exists() {
        assert!(Instant::now() < deadline, "the example made no sockets: {:?}", lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    let gateway = (vmm::GATEWAY.octets(), vmm::ECHO_PORT);
    let said = |what: &str| lines.lock().unwrap().iter().filter(|l| *l == what).count();
    for boot in 1..=2 {
        let mut guest = Guest::connect(&socket, &dir.0, boot);
        tcp_echo(&mut guest, [0x52, 0x54, 0, 0, 0, 1], [10, 0, 0, 11], gateway, 1 << 20, WAIT);
        // The VM shuts down; the program sees its link go before the
        // next boot (a reconnect quicker than the datapath's look at the
        // link shows no flap).
        drop(guest);
        let deadline = Instant::now() + WAIT;
        while said("vm1: link down") < boot as usize {
            assert!(Instant::now() < deadline, "no link down: {:?}", lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let summary = vmm.join().unwrap().expect("the example ran");
    assert!(summary.shutdown.is_ok(), "{:?}", summary.shutdown);
    assert!(summary.gateway_rx > 0);
    assert_eq!((said("vm1: link up"), said("vm1: link down")), (2, 2), "{:?}", lines.lock().unwrap());
    let all = lines.lock().unwrap().join("\n");
    assert!(all.contains(&format!("path={}", socket.display())), "{all}");
    assert!(!socket.exists(), "the sockets went with the switch");
}
