/**
 * Fallback next hop for the benchmark when Postfix's smtp-sink is not installed: an
 * smtp-server that throws every message away and prints a running count in smtp-sink's
 * `-c` format (`mesg=N`), so the benchmark reads both the same way.
 * Usage: node dist-tools/tools/bench/node-sink.js <port>
 */
import { SMTPServer } from 'smtp-server';

const port = Number(process.argv[2]);
let messages = 0;
const server = new SMTPServer({
  authOptional: true,
  disabledCommands: ['AUTH', 'STARTTLS'],
  disableReverseLookup: true,
  logger: false,
  size: 256 * 1024 * 1024,
  onData: (stream, _session, cb) => {
    stream.on('data', () => {});
    stream.on('end', () => {
      messages++;
      process.stdout.write(`mesg=${messages}\n`);
      cb(null, 'Ok: sunk');
    });
  },
});
server.on('error', () => {});
server.listen(port, '127.0.0.1');
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
