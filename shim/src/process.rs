//! One process of a container (its init or an exec): status, exit and stdio.

use containerd_shim::{io::Stdio, protos::protobuf::well_known_types::timestamp::Timestamp};
use containerd_shim_protos::api::Status;
use tokio::sync::watch;

use crate::{oci::ExecSpec, stdio::ProcessStdio};

/// How a process ended.
#[derive(Debug, Clone, Default)]
pub struct Exit {
    pub code: u32,
    pub at: Timestamp,
}

/// Lifecycle of a process as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

impl State {
    pub fn to_proto(self) -> Status {
        match self {
            State::Created => Status::CREATED,
            State::Running => Status::RUNNING,
            State::Paused => Status::PAUSED,
            State::Stopped => Status::STOPPED,
        }
    }
}

/// A container's init or exec process.
pub struct Process {
    pub stdio: Stdio,
    pub pid: i32,
    pub state: State,
    pub exit: Option<Exit>,
    pub io: Option<ProcessStdio>,
    /// For execs: the OCI process spec to run.
    pub spec: Option<ExecSpec>,
    exited: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(stdio: Stdio) -> Self {
        let (exited, _) = watch::channel(None);
        Self {
            stdio,
            pid: 0,
            state: State::Created,
            exit: None,
            io: None,
            spec: None,
            exited,
        }
    }

    /// Records the exit and wakes every Wait.
    pub fn set_exited(&mut self, exit: Exit) {
        self.state = State::Stopped;
        self.exit = Some(exit.clone());
        self.exited.send_replace(Some(exit));
    }

    /// A receiver that yields the exit once the process has ended.
    pub fn subscribe_exit(&self) -> watch::Receiver<Option<Exit>> {
        self.exited.subscribe()
    }

    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }
}
