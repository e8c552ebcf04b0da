//! Child processes that can never hang a test: stdout arrives line by line through a
//! channel read with a deadline, stderr is kept for the failure message, and the
//! process is killed when its handle is dropped (including while a test unwinds).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How much of a child's stderr is kept for diagnostics.
const STDERR_KEEP: usize = 16 * 1024;

/// What waiting for the next stdout line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Line(String),
    /// The child closed its stdout (it exited or is exiting).
    Eof,
    Timeout,
}

pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Disconnected once the child's stderr is read to its end.
    stderr_read: Receiver<()>,
}

impl Proc {
    /// Starts `cmd` with piped stdio. `name` labels it in failure messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start {name} ({program}): {e}; install the reference clients with \
                 scripts/install-test-tools.sh"
            ),
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let (read_to_end, stderr_read) = mpsc::channel::<()>();
        thread::spawn(move || {
            // Dropped when this thread ends: `wait` knows the whole of stderr is kept.
            let _read_to_end = read_to_end;
            let mut pipe = stderr_pipe;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut kept = sink.lock().unwrap_or_else(|e| e.into_inner());
                kept.push_str(&String::from_utf8_lossy(&chunk[..n]));
                if kept.len() > STDERR_KEEP {
                    let cut = kept.len() - STDERR_KEEP;
                    let cut = (cut..kept.len())
                        .find(|i| kept.is_char_boundary(*i))
                        .unwrap_or(0);
                    kept.drain(..cut);
                }
            }
        });
        let stdin = child.stdin.take();
        Proc {
            name: name.to_string(),
            child,
            stdin,
            lines: rx,
            stderr,
            stderr_read,
        }
    }

    /// Stops (`libc::SIGSTOP`) or resumes (`libc::SIGCONT`) the child: a client that
    /// falls silent mid-connection, without closing its socket.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which `Child` has not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        let name = &self.name;
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{name}: stdin already closed"));
        if let Err(e) = writeln!(stdin, "{line}").and_then(|_| stdin.flush()) {
            panic!(
                "{name}: cannot write to its stdin ({e}); stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Line {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Line::Line(line),
            Err(RecvTimeoutError::Timeout) => Line::Timeout,
            Err(RecvTimeoutError::Disconnected) => Line::Eof,
        }
    }

    /// What the child wrote on stderr so far (the last 16 KiB).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for the child to exit, and for its stderr to be read to the end so that
    /// `stderr` has all of it; kills it after `timeout` and returns None then.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = self.stderr_read.recv_timeout(left);
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    self.kill();
                    return None;
                }
            }
        }
    }

    /// SIGKILL: the process dies without saying goodbye to the broker, so the broker
    /// sees its TCP connection close without a DISCONNECT.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
