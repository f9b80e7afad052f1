//! Fuzz target: arbitrary bytes from a PostgreSQL client through the PostgreSQL front's
//! decoding, as a connection reads them: opening packets first (SSLRequest, CancelRequest,
//! StartupMessage), then typed messages cut by their length and decoded alone. A panic
//! anywhere is a finding (pgwire's own decoders panic on short messages: `decode` must
//! contain that); so is a message that decodes but does not encode back to its bytes.
//! No IO.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use querygate_postgres::decode;

/// pgwire's decoders panic on short messages, and `decode` catches that (`catch_unwind`)
/// and refuses the message; libFuzzer's panic hook would abort on the caught panic too. So
/// caught panics are silent here, and a panic that escapes `decode` still reaches
/// `fuzz_target!`'s own wrapper, which aborts: that is the finding.
fn quiet_caught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fuzz_target!(|data: &[u8]| {
    quiet_caught_panics();
    let mut buf = BytesMut::from(data);
    // The opening phase: packets until one fails or the bytes run out.
    for _ in 0..3 {
        match decode::opening_frame(&mut buf) {
            Ok(Some(frame)) => {
                let _ = decode::opening(frame);
            }
            _ => break,
        }
    }
    // The message phase, over whatever is left, and over the whole input as well.
    for mut rest in [buf, BytesMut::from(data)] {
        while let Ok(Some(frame)) = decode::frame(&mut rest, 1 << 20) {
            if let Ok(message) = decode::message(&frame) {
                let mut again = BytesMut::new();
                message.encode(&mut again).expect("a decoded message encodes");
                assert_eq!(again, frame, "a decoded message encodes back to its bytes");
            }
            let text = String::from_utf8_lossy(&frame);
            let _ = decode::changes_resolution(&text);
        }
    }
});
