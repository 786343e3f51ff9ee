//! Eddy firmware for the QEMU `lm3s6965evb` board.
//!
//! The real firmware core (`eddy-firmware`): a `Node` samples simulated
//! sensors every 100 ms, a `Backlog` keeps frames until the gateway's `Ack`
//! and resends them, commands change the interval, drive output pins or
//! reboot. Frames travel COBS-framed with a CRC-32C on UART0.

#![no_std]
#![no_main]

#[cfg(feature = "ota-verify")]
mod ota;
mod sensors;
mod uart;

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::SCB;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use eddy_firmware::drivers::{AdcSensor, Every, Lm75Sensor, PinOutputs, Sht4xSensor};
use eddy_firmware::{Backlog, Link, Node, Sensor, SerialLink};
use eddy_proto::Frame;
use panic_semihosting as _;

use sensors::{SimAdc, SimBus, SimPin, TickDelay};
use uart::Uart0;

/// The device id; set `EDDY_DEVICE_ID` when building to change it.
const DEVICE: &str = match option_env!("EDDY_DEVICE_ID") {
    Some(id) => id,
    None => "qemu-0001",
};
const BOARD: &str = "lm3s6965";
const FIRMWARE: &str = env!("CARGO_PKG_VERSION");
const INTERVAL_MS: u32 = 100;
/// The LM75 board temperature changes slowly: once a second.
const BOARD_TEMP_INTERVAL_MS: u32 = 1_000;
/// Frames kept for retransmission (about 13 KiB of stack).
const BACKLOG: usize = 16;
const RESEND_AFTER_MS: u64 = 1_000;
/// SysTick runs from the 12 MHz core clock QEMU gives this board.
const CORE_HZ: u32 = 12_000_000;

static MILLIS: AtomicU32 = AtomicU32::new(0);
static MILLIS_HIGH: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    if MILLIS.fetch_add(1, Ordering::Relaxed) == u32::MAX {
        MILLIS_HIGH.fetch_add(1, Ordering::Relaxed);
    }
}

/// Milliseconds since boot.
pub fn millis() -> u64 {
    loop {
        let high = MILLIS_HIGH.load(Ordering::Relaxed);
        let low = MILLIS.load(Ordering::Relaxed);
        if high == MILLIS_HIGH.load(Ordering::Relaxed) {
            return (u64::from(high) << 32) | u64::from(low);
        }
    }
}

/// A number that differs between boots. A real board keeps a counter in
/// flash; QEMU has none, so this asks the host's clock (semihosting) in
/// centiseconds, which also differs across a reset within one run.
fn boot_number() -> u32 {
    // SAFETY: semihosting calls with no arguments; QEMU runs with
    // semihosting enabled (without it they would fault).
    let (secs, centis) = unsafe {
        (
            cortex_m_semihosting::syscall!(TIME),
            cortex_m_semihosting::syscall!(CLOCK),
        )
    };
    (secs as u32).wrapping_mul(100).wrapping_add(centis as u32)
}

#[entry]
fn main() -> ! {
    let Some(mut core) = cortex_m::Peripherals::take() else {
        panic!("peripherals taken twice");
    };
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(CORE_HZ / 1_000 - 1);
    core.SYST.clear_current();
    core.SYST.enable_interrupt();
    core.SYST.enable_counter();

    let mut link = SerialLink::new(Uart0::init());
    let boot = boot_number();
    let Ok(mut node) = Node::new(DEVICE, boot, INTERVAL_MS) else {
        panic!("invalid device id {DEVICE}");
    };
    let mut backlog: Backlog<BACKLOG> = Backlog::new(boot);
    let mut air = Sht4xSensor::new(SimBus::default(), TickDelay);
    let mut board_temp = Every::new(
        Lm75Sensor::new(SimBus::default(), 0x48, "board_temp"),
        BOARD_TEMP_INTERVAL_MS,
    );
    let mut adc = AdcSensor::new(SimAdc, "adc0", 4095, 3.3);
    let mut outputs = PinOutputs::new([SimPin, SimPin, SimPin, SimPin]);

    // A frame that cannot be sent stays in the backlog and goes out with
    // the next retransmission, so send results are not needed here.
    let _ = link.send(&node.hello(BOARD, FIRMWARE));
    loop {
        let now = millis();
        #[cfg(feature = "ota-verify")]
        let mut ota_answer = None;
        let _ = link.receive(|frame| match frame {
            Ok(Frame::Ack(ack)) if ack.device == DEVICE => {
                backlog.ack(&ack, now);
            }
            #[cfg(feature = "ota-verify")]
            Ok(Frame::OtaOffer(offer)) if offer.device == DEVICE => {
                ota_answer = Some(ota::answer(&offer));
            }
            // Refused commands (wrong device, bad interval) change nothing.
            Ok(frame) => {
                let _ = node.handle(&frame, &mut outputs);
            }
            // Damaged bytes are skipped; what matters is sent again.
            Err(_) => {}
        });
        #[cfg(feature = "ota-verify")]
        if let Some(answer) = ota_answer {
            let _ = link.send(&answer);
        }
        if node.reboot_requested() {
            SCB::sys_reset();
        }
        let mut sensors: [&mut dyn Sensor; 4] = [&mut air, &mut board_temp, &mut adc, &mut outputs];
        if let Some(mut telemetry) = node.poll(now, 0, &mut sensors) {
            backlog.push(&mut telemetry, now);
            let _ = link.send(&Frame::Telemetry(telemetry));
        }
        if backlog.timed_out(now, RESEND_AFTER_MS) {
            // Say hello again too: the gateway side may have restarted.
            let _ = link.send(&node.hello(BOARD, FIRMWARE));
            for telemetry in backlog.resend(now) {
                let _ = link.send(&Frame::Telemetry(telemetry.clone()));
            }
        }
        cortex_m::asm::wfi();
    }
}
