//! `drawbridge cursor get|set`: read or store a cursor (routed to its `__cursors` partition
//! leader by the client). `get` prints the offset, or -1 when none is stored.

use drawbridge_client::Client;

use crate::args::CursorCommand;
use crate::CliResult;

pub async fn run(client: &Client, cmd: CursorCommand) -> CliResult {
    match cmd {
        CursorCommand::Get(c) => {
            let offset = client
                .fetch_cursor(&c.cursor_id, &c.stream, c.partition)
                .await?;
            println!("{}", offset.unwrap_or(-1));
        }
        CursorCommand::Set { cursor: c, offset } => {
            client
                .set_cursor(&c.cursor_id, &c.stream, c.partition, offset)
                .await?;
        }
    }
    Ok(())
}
