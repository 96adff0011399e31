//! A scriptable SMTP server for failure injection: it answers each mail as
//! its script says (accept, a 4xx or 5xx reply, a dropped connection, no
//! answer at all) and records every mail whose data it received.
//!
//! It speaks just enough ESMTP for lettre: greeting, EHLO, MAIL, RCPT, DATA,
//! RSET, NOOP, QUIT. It listens on 127.0.0.1 on a port the OS chooses.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the server answers one mail's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `250`: the server has the mail.
    Accept,
    /// `250`, then the server closes the connection, as one that ends idle
    /// sessions does.
    AcceptThenClose,
    /// A reply such as `451 4.3.0 try again later`; a `421` also closes the
    /// connection, as a server that announces it is closing does.
    Code(u16, &'static str),
    /// Reads the data and closes the connection without answering.
    DropAfterData,
    /// Reads the data and never answers, keeping the connection open.
    Hang,
}

/// The replies for mails to one recipient, in order; the last one repeats.
#[derive(Debug, Clone)]
struct Rule {
    recipient: String,
    replies: VecDeque<Reply>,
}

/// What the server does: per recipient, a list of replies; anything else
/// is accepted.
#[derive(Debug, Clone, Default)]
pub struct Script {
    rules: Vec<Rule>,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers mails to `recipient` with `replies`, one per mail in order,
    /// repeating the last.
    pub fn to(mut self, recipient: &str, replies: impl IntoIterator<Item = Reply>) -> Self {
        let replies: VecDeque<Reply> = replies.into_iter().collect();
        assert!(!replies.is_empty(), "a rule needs at least one reply");
        self.rules.push(Rule {
            recipient: recipient.to_lowercase(),
            replies,
        });
        self
    }

    fn next_reply(&mut self, recipient: &str) -> Reply {
        let recipient = recipient.to_lowercase();
        match self
            .rules
            .iter_mut()
            .find(|rule| rule.recipient == recipient)
        {
            Some(rule) if rule.replies.len() > 1 => rule.replies.pop_front().unwrap(),
            Some(rule) => rule.replies[0].clone(),
            None => Reply::Accept,
        }
    }
}

/// One mail whose data the server received, and how it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub recipient: String,
    pub message_id: String,
    pub reply: Reply,
    /// When the end of the data arrived.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct State {
    script: Script,
    received: Vec<Received>,
    connections: usize,
}

/// A running scripted server; it stops when the test's runtime ends.
#[derive(Debug, Clone)]
pub struct ScriptedSmtp {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl ScriptedSmtp {
    pub async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            script,
            ..State::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().unwrap().connections += 1;
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Self { port, state }
    }

    /// Every mail whose data arrived, in order.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The mails the server accepted.
    pub fn accepted(&self) -> Vec<Received> {
        let received = self.received();
        received
            .into_iter()
            .filter(|mail| matches!(mail.reply, Reply::Accept | Reply::AcceptThenClose))
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Waits until `count` mails arrived, then returns them.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} mails reached the scripted server in {timeout:?}: {received:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A port on 127.0.0.1 where nothing listens: an SMTP server that is down.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// One SMTP session.
async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader);
    let mut recipient = String::new();
    if writer.write_all(b"220 scripted ESMTP\r\n").await.is_err() {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let command = line.trim_end().to_uppercase();
        let answer: &[u8] = if command.starts_with("EHLO") {
            b"250-scripted\r\n250 8BITMIME\r\n"
        } else if command.starts_with("RCPT TO:") {
            recipient = address_in(&line);
            b"250 2.1.5 ok\r\n"
        } else if command == "DATA" {
            if writer.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let Some(message_id) = read_data(&mut lines).await else {
                return;
            };
            let reply = {
                let mut state = state.lock().unwrap();
                let reply = state.script.next_reply(&recipient);
                state.received.push(Received {
                    recipient: recipient.clone(),
                    message_id,
                    reply: reply.clone(),
                    at: Instant::now(),
                });
                reply
            };
            match reply {
                Reply::Accept => b"250 2.0.0 queued\r\n",
                Reply::AcceptThenClose => {
                    let _ = writer.write_all(b"250 2.0.0 queued\r\n").await;
                    return;
                }
                Reply::Code(code, text) => {
                    let answer = format!("{code} {text}\r\n");
                    if writer.write_all(answer.as_bytes()).await.is_err() || code == 421 {
                        return;
                    }
                    continue;
                }
                Reply::DropAfterData => return,
                Reply::Hang => {
                    std::future::pending::<()>().await;
                    return;
                }
            }
        } else if command == "QUIT" {
            let _ = writer.write_all(b"221 bye\r\n").await;
            return;
        } else if command.starts_with("MAIL FROM:")
            || command.starts_with("HELO")
            || command == "RSET"
            || command == "NOOP"
        {
            b"250 ok\r\n"
        } else {
            b"500 unrecognised command\r\n"
        };
        if writer.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Reads the mail data up to the line with a single dot; returns its
/// Message-ID header, or `None` if the client went away.
async fn read_data(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
    let mut message_id = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == ".\r\n" {
            return Some(message_id);
        }
        if let Some(value) = line
            .split_once(':')
            .filter(|(name, _)| name.eq_ignore_ascii_case("message-id"))
            .map(|(_, value)| value.trim())
        {
            message_id = value.to_string();
        }
    }
}

fn address_in(command: &str) -> String {
    let start = command.find('<').map_or(0, |at| at + 1);
    let end = command.rfind('>').unwrap_or(command.len());
    command[start..end].to_string()
}
