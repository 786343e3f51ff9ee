//! Eddy firmware for the QEMU `lm3s6965evb` board.
//!
//! The real firmware core (`eddy-firmware`): a `Node` samples simulated
//! sensors every 100 ms, a `Backlog` keeps frames until the gateway's `Ack`
//! and resends them, commands change the interval, drive output pins or
//! reboot. Frames travel COBS-framed with a CRC-32C on UART0.

#![no_std]
#![no_main]

mod sensors;
mod uart;

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::SCB;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use eddy_firmware::{Backlog, Node, Sensor};
use eddy_proto::Frame;
use eddy_proto::link::{FrameDecoder, MAX_WIRE_LEN, encode_framed};
use panic_semihosting as _;

use sensors::{Adc, Pins, Thermometer};
use uart::Uart0;

/// The device id; set `EDDY_DEVICE_ID` when building to change it.
const DEVICE: &str = match option_env!("EDDY_DEVICE_ID") {
    Some(id) => id,
    None => "qemu-0001",
};
const BOARD: &str = "lm3s6965";
const FIRMWARE: &str = env!("CARGO_PKG_VERSION");
const INTERVAL_MS: u32 = 100;
/// Frames kept for retransmission (about 13 KiB of RAM).
const BACKLOG: usize = 16;
const RESEND_AFTER_MS: u64 = 1_000;
/// SysTick runs from the 12 MHz core clock QEMU gives this board.
const CORE_HZ: u32 = 12_000_000;

static MILLIS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

/// Milliseconds since boot, widened to 64 bits across the u32 wrap.
struct Clock {
    last: u32,
    high: u64,
}

impl Clock {
    fn now(&mut self) -> u64 {
        let ms = MILLIS.load(Ordering::Relaxed);
        if ms < self.last {
            self.high += 1 << 32;
        }
        self.last = ms;
        self.high | u64::from(ms)
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

fn send(uart: &mut Uart0, frame: &Frame) {
    let mut out = [0u8; MAX_WIRE_LEN];
    if let Ok(bytes) = encode_framed(frame, &mut out) {
        uart.write_all(bytes);
    }
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

    let mut uart = Uart0::init();
    let boot = boot_number();
    let Ok(mut node) = Node::new(DEVICE, boot, INTERVAL_MS) else {
        panic!("invalid device id {DEVICE}");
    };
    let mut backlog: Backlog<BACKLOG> = Backlog::new(boot);
    let mut decoder = FrameDecoder::new();
    let pins = Pins::default();
    let mut clock = Clock { last: 0, high: 0 };

    send(&mut uart, &node.hello(BOARD, FIRMWARE));
    loop {
        let now = clock.now();
        while let Some(byte) = uart.read_byte() {
            match decoder.push(byte) {
                Some(Ok(Frame::Ack(ack))) if ack.device == DEVICE => {
                    backlog.ack(&ack, now);
                }
                Some(Ok(frame)) => {
                    // Refused commands (wrong device, bad interval) change nothing.
                    let _ = node.handle(&frame, &mut &pins);
                }
                // Damaged bytes are skipped; the gateway resends what matters.
                Some(Err(_)) | None => {}
            }
        }
        if node.reboot_requested() {
            SCB::sys_reset();
        }
        let mut thermometer = Thermometer;
        let mut adc = Adc;
        let mut outputs = &pins;
        let mut sensors: [&mut dyn Sensor; 3] = [&mut thermometer, &mut adc, &mut outputs];
        if let Some(mut telemetry) = node.poll(now, 0, &mut sensors) {
            backlog.push(&mut telemetry, now);
            send(&mut uart, &Frame::Telemetry(telemetry));
        }
        if backlog.timed_out(now, RESEND_AFTER_MS) {
            // Say hello again too: the gateway side may have restarted.
            send(&mut uart, &node.hello(BOARD, FIRMWARE));
            for telemetry in backlog.resend(now) {
                send(&mut uart, &Frame::Telemetry(telemetry.clone()));
            }
        }
        cortex_m::asm::wfi();
    }
}
