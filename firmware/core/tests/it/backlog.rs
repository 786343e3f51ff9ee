use eddy_firmware::{Backlog, seq_le};
use eddy_proto::{Ack, Reading, Telemetry};

const BOOT: u32 = 0xB007;

fn frame(seq: u32) -> Telemetry {
    let mut readings = heapless::Vec::new();
    readings
        .push(Reading {
            metric: "t".try_into().expect("fits"),
            value: f64::from(seq),
        })
        .expect("room");
    Telemetry {
        device: "dev-1".try_into().expect("fits"),
        boot: BOOT,
        seq,
        oldest: seq,
        timestamp_ms: 0,
        readings,
    }
}

fn ack(boot: u32, seq: u32) -> Ack {
    Ack {
        device: "dev-1".try_into().expect("fits"),
        boot,
        seq,
    }
}

fn held<const N: usize>(b: &mut Backlog<N>) -> Vec<(u32, u32)> {
    b.resend(0).map(|t| (t.seq, t.oldest)).collect()
}

#[test]
fn frames_stay_until_acknowledged_and_carry_the_oldest_held() {
    let mut b: Backlog<8> = Backlog::new(BOOT);
    for seq in 0..5 {
        let mut f = frame(seq);
        b.push(&mut f, 0);
        assert_eq!(f.oldest, 0, "every frame names the oldest unacked one");
    }
    assert_eq!(b.ack(&ack(BOOT, 2), 10), 3);
    assert_eq!(b.oldest(), Some(3));
    let mut f = frame(5);
    b.push(&mut f, 10);
    assert_eq!(f.oldest, 3);
    // An old or repeated ack releases nothing more.
    assert_eq!(b.ack(&ack(BOOT, 1), 11), 0);
    assert_eq!(b.len(), 3);
    assert_eq!(b.ack(&ack(BOOT, 5), 12), 3);
    assert!(b.is_empty());
    let mut f = frame(6);
    b.push(&mut f, 13);
    assert_eq!(f.oldest, 6, "with nothing held a frame is its own oldest");
}

#[test]
fn an_ack_of_another_boot_releases_nothing() {
    let mut b: Backlog<4> = Backlog::new(BOOT);
    b.push(&mut frame(0), 0);
    assert_eq!(b.ack(&ack(BOOT + 1, 100), 1), 0);
    assert_eq!(b.len(), 1);
}

#[test]
fn a_full_backlog_drops_the_oldest_counts_it_and_says_so() {
    let mut b: Backlog<4> = Backlog::new(BOOT);
    for seq in 0..6 {
        b.push(&mut frame(seq), 0);
    }
    assert_eq!(b.dropped(), 2);
    assert_eq!(b.len(), 4);
    let mut f = frame(6);
    b.push(&mut f, 0);
    assert_eq!(b.dropped(), 3);
    assert_eq!(f.oldest, 3, "the gateway learns 0..=2 are gone");
    // Retransmitted frames are brought up to date too.
    assert_eq!(held(&mut b), vec![(3, 3), (4, 3), (5, 3), (6, 3)]);
}

#[test]
fn retransmission_is_due_only_after_a_timeout_without_progress() {
    let mut b: Backlog<8> = Backlog::new(BOOT);
    assert!(!b.timed_out(1_000_000, 100), "nothing held, nothing due");
    b.push(&mut frame(0), 1_000);
    b.push(&mut frame(1), 1_050);
    assert!(!b.timed_out(1_099, 100));
    assert!(b.timed_out(1_100, 100));
    // An ack that releases something is progress.
    b.ack(&ack(BOOT, 0), 1_100);
    assert!(!b.timed_out(1_150, 100));
    assert!(b.timed_out(1_200, 100));
    // So is a retransmission; the timeout doubles after each one in a row.
    assert_eq!(b.resend(1_200).count(), 1);
    assert!(!b.timed_out(1_350, 100));
    assert!(b.timed_out(1_400, 100), "2 x base after one timeout");
    assert_eq!(b.resend(1_400).count(), 1);
    assert!(!b.timed_out(1_750, 100));
    assert!(b.timed_out(1_800, 100), "4 x base after two");
    // Progress resets the backoff.
    b.push(&mut frame(2), 1_800);
    b.ack(&ack(BOOT, 1), 1_800);
    assert!(b.timed_out(1_900, 100));
}

#[test]
fn the_backoff_is_capped() {
    let mut b: Backlog<8> = Backlog::new(BOOT);
    b.push(&mut frame(0), 0);
    let mut now = 0;
    for _ in 0..20 {
        now += 100 * 32;
        assert!(b.timed_out(now, 100), "never longer than 32 x base");
        assert_eq!(b.resend(now).count(), 1);
    }
}

#[test]
fn sequence_order_survives_wrapping() {
    assert!(seq_le(u32::MAX, 0));
    assert!(seq_le(u32::MAX - 3, 2));
    assert!(!seq_le(2, u32::MAX - 3));
    assert!(seq_le(5, 5));
    let mut b: Backlog<8> = Backlog::new(BOOT);
    for seq in [u32::MAX - 1, u32::MAX, 0, 1] {
        b.push(&mut frame(seq), 0);
    }
    assert_eq!(b.ack(&ack(BOOT, 0), 1), 3);
    assert_eq!(b.oldest(), Some(1));
}
