//! A/B slots on a RAM-backed NOR flash with power-loss injection.

use crate::common::{self, BOARD, LAYOUT, RamFlash, SECRET, image, payload, version};
use eddy_ota::slots::{SlotError, Slots};
use eddy_ota::{ImageError, KEY_LEN, OFFER_LEN, public_key};
use proptest::prelude::*;

/// A device with `v` confirmed in slot 0, installed like any update.
fn device_with(v: &str) -> Slots<RamFlash> {
    let mut slots = Slots::open(common::flash(), LAYOUT).expect("opens");
    install(
        &mut slots,
        &image(BOARD, v, &payload(1, 3000), &SECRET),
        256,
    )
    .expect("installs");
    assert_eq!(
        slots.boot().expect("boots"),
        1,
        "trial boot of the new image"
    );
    assert!(slots.confirm().expect("confirms"));
    slots
}

fn install(slots: &mut Slots<RamFlash>, image: &[u8], chunk: usize) -> Result<(), SlotError> {
    let key = public_key(&SECRET);
    let mut update = slots.begin_update(&image[..OFFER_LEN], &key, BOARD)?;
    for (i, c) in image[OFFER_LEN..].chunks(chunk).enumerate() {
        slots.write_chunk(&mut update, (i * chunk) as u32, c)?;
    }
    slots.finish_update(&update)
}

#[test]
fn an_update_boots_on_trial_and_stays_once_confirmed() {
    let mut slots = device_with("1.0.0");
    let active = slots.state().active;
    install(
        &mut slots,
        &image(BOARD, "1.1.0", &payload(2, 5000), &SECRET),
        512,
    )
    .expect("installs");
    let trial = slots.boot().expect("boots");
    assert_ne!(trial, active);
    assert!(slots.confirm().expect("confirms"));
    assert_eq!(slots.state().active, trial);
    assert_eq!(slots.installed_version(), version("1.1.0"));
    // Reboots keep it.
    let mut slots = Slots::open(slots.into_flash(), LAYOUT).expect("reopens");
    assert_eq!(slots.boot().expect("boots"), trial);
    assert_eq!(slots.state().min_version, version("1.1.0"));
}

#[test]
fn an_image_that_never_confirms_is_rolled_back_on_the_next_boot() {
    let mut slots = device_with("1.0.0");
    let good = slots.state().active;
    install(
        &mut slots,
        &image(BOARD, "2.0.0", &payload(3, 4000), &SECRET),
        256,
    )
    .expect("installs");
    assert_ne!(slots.boot().expect("boots"), good, "trial runs once");
    // It crashes before its health check: the device resets.
    let mut slots = Slots::open(slots.into_flash(), LAYOUT).expect("reopens");
    assert_eq!(slots.boot().expect("boots"), good, "rolled back");
    assert_eq!(slots.state().trial, None);
    assert!(!slots.confirm().expect("nothing to confirm"));
    assert_eq!(slots.installed_version(), version("1.0.0"));
}

#[test]
fn bad_signature_wrong_board_and_old_versions_are_refused_before_any_write() {
    let before = device_with("1.2.0").into_flash();
    let cases = [
        (
            image(BOARD, "1.3.0", &payload(4, 100), &[9; KEY_LEN]),
            SlotError::Image(ImageError::BadSignature),
        ),
        (
            image("stm32f4", "1.3.0", &payload(4, 100), &SECRET),
            SlotError::Image(ImageError::WrongBoard),
        ),
        (
            image(BOARD, "1.1.9", &payload(4, 100), &SECRET),
            SlotError::Image(ImageError::NotNewer {
                offered: version("1.1.9"),
                installed: version("1.2.0"),
            }),
        ),
        (
            image(BOARD, "1.2.0", &payload(4, 100), &SECRET),
            SlotError::Image(ImageError::NotNewer {
                offered: version("1.2.0"),
                installed: version("1.2.0"),
            }),
        ),
    ];
    for (img, expected) in cases {
        let mut slots = Slots::open(before.clone(), LAYOUT).expect("opens");
        assert_eq!(install(&mut slots, &img, 64), Err(expected));
        assert_eq!(slots.into_flash().mem, before.mem, "flash untouched");
    }
}

#[test]
fn a_corrupted_chunk_is_caught_by_the_hash_and_changes_nothing() {
    let mut slots = device_with("1.0.0");
    let state = slots.state();
    let mut img = image(BOARD, "1.0.1", &payload(5, 2000), &SECRET);
    img[OFFER_LEN + 777] ^= 0x01;
    assert_eq!(
        install(&mut slots, &img, 100),
        Err(SlotError::Image(ImageError::HashMismatch))
    );
    assert_eq!(slots.state(), state);
    assert_eq!(slots.boot().expect("boots"), state.active);
}

#[test]
fn an_interrupted_transfer_resumes_at_the_last_written_offset() {
    let mut slots = device_with("1.0.0");
    let img = image(BOARD, "1.0.2", &payload(6, 3000), &SECRET);
    let key = public_key(&SECRET);
    let mut update = slots
        .begin_update(&img[..OFFER_LEN], &key, BOARD)
        .expect("offer");
    let body = &img[OFFER_LEN..];
    slots
        .write_chunk(&mut update, 0, &body[..1000])
        .expect("chunk");
    // The link drops; the sender resumes from what the device reports.
    assert_eq!(update.written, 1000);
    assert_eq!(
        slots.write_chunk(&mut update, 0, &body[..1000]),
        Err(SlotError::OutOfOrder {
            expected: 1000,
            got: 0
        })
    );
    assert_eq!(
        slots.finish_update(&update),
        Err(SlotError::Incomplete {
            written: 1000,
            total: 3000
        })
    );
    slots
        .write_chunk(&mut update, 1000, &body[1000..])
        .expect("rest");
    slots.finish_update(&update).expect("verifies");
}

/// Every step of a full update, from the offer to the confirmation.
fn full_update(slots: &mut Slots<RamFlash>, img: &[u8]) -> Result<(), SlotError> {
    install(slots, img, 200)?;
    slots.boot()?;
    slots.confirm()?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Power is cut after `cut` flash operations, anywhere in an update
    /// (erase, chunk writes, state writes, trial boot, confirmation).
    /// After power returns the device boots a whole image: the old one or
    /// the new one, never neither.
    #[test]
    fn a_power_cut_anywhere_leaves_a_bootable_device(cut in 1usize..40) {
        let slots = device_with("1.0.0");
        let mut flash = slots.into_flash();
        flash.budget = Some(cut);
        let mut slots = Slots::open(flash, LAYOUT).expect("opens");
        let img = image(BOARD, "1.1.0", &payload(8, 3000), &SECRET);
        let _ = full_update(&mut slots, &img);
        let mut slots = Slots::open(slots.into_flash().reboot(), LAYOUT).expect("reopens");
        let slot = slots.boot().expect("a bootable image survives");
        prop_assert!(slots.verify_slot(slot).expect("reads"));
        let v = slots.header(slot).expect("header").version;
        prop_assert!(v == version("1.0.0") || v == version("1.1.0"), "{v}");
    }
}
