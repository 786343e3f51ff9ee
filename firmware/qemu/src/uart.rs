//! UART0 of the lm3s6965 (an ARM PL011) by register access.
//!
//! Polled, no interrupts: the main loop drains the 16-byte receive FIFO
//! every pass, and transmit waits while the FIFO is full.

use core::convert::Infallible;
use core::ptr::{read_volatile, write_volatile};

use embedded_io::{ErrorType, Read, ReadReady, Write};

const BASE: usize = 0x4000_C000;
const DR: usize = 0x00;
const FR: usize = 0x18;
const IBRD: usize = 0x24;
const FBRD: usize = 0x28;
const LCRH: usize = 0x2C;
const CTL: usize = 0x30;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;

/// The UART, initialised for 115200 8N1 with FIFOs (QEMU ignores the rate).
pub struct Uart0(());

impl Uart0 {
    pub fn init() -> Self {
        // SAFETY: fixed, documented PL011 registers of this SoC; only this
        // type touches them and it is created once, before any use.
        unsafe {
            write(CTL, 0);
            write(IBRD, 6);
            write(FBRD, 33);
            write(LCRH, (3 << 5) | (1 << 4));
            write(CTL, 1 | (1 << 8) | (1 << 9));
        }
        Self(())
    }

    fn write_byte(&mut self, b: u8) {
        // SAFETY: see `init`.
        unsafe {
            while read(FR) & FR_TXFF != 0 {}
            write(DR, u32::from(b));
        }
    }

    fn read_byte(&mut self) -> Option<u8> {
        // SAFETY: see `init`.
        unsafe {
            if read(FR) & FR_RXFE != 0 {
                None
            } else {
                Some((read(DR) & 0xFF) as u8)
            }
        }
    }
}

impl ErrorType for Uart0 {
    type Error = Infallible;
}

impl Write for Uart0 {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &b in buf {
            self.write_byte(b);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl ReadReady for Uart0 {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        // SAFETY: see `init`.
        Ok(unsafe { read(FR) } & FR_RXFE == 0)
    }
}

impl Read for Uart0 {
    /// Reads what the FIFO holds, at least one byte (waiting for it).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let mut n = 0;
        while n < buf.len() {
            match self.read_byte() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None if n > 0 || buf.is_empty() => break,
                None => {}
            }
        }
        Ok(n)
    }
}

unsafe fn write(offset: usize, value: u32) {
    // SAFETY: the caller passes one of the register offsets above.
    unsafe { write_volatile((BASE + offset) as *mut u32, value) }
}

unsafe fn read(offset: usize) -> u32 {
    // SAFETY: the caller passes one of the register offsets above.
    unsafe { read_volatile((BASE + offset) as *const u32) }
}
