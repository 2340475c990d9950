package org.trustedml.fs;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * The key agent client: executors of a standalone cluster have no installed key source, so the
 * first key request starts ONE agent per JVM, {@code <python> -m trustedml._keyagent},
 * which attests with this executor's own evidence. Frames on its stdin/stdout are uint32 BE
 * length || payload; the first carries the descriptor, then requests (op 'U' or 'G', uint16 BE
 * key id length, key id, and for 'U' the wrapped key) each get one reply in the
 * {@link TmlKeys.Source} format. The agent exits on stdin EOF; the JVM kills it at shutdown.
 */
final class TmlAgent implements TmlKeys.Source {
  static final String MODULE = "trustedml._keyagent";
  private static final int MAX_FRAME = 1 << 20;
  private static TmlAgent running;

  private final String descriptor;
  private final Process process;
  private final DataOutputStream toAgent;
  private final DataInputStream fromAgent;

  private TmlAgent(String descriptor, String python) throws IOException {
    this.descriptor = descriptor;
    ProcessBuilder builder = new ProcessBuilder(List.of(python, "-m", MODULE));
    builder.redirectError(ProcessBuilder.Redirect.INHERIT);
    process = builder.start();
    toAgent = new DataOutputStream(new BufferedOutputStream(process.getOutputStream()));
    fromAgent = new DataInputStream(new BufferedInputStream(process.getInputStream()));
    Runtime.getRuntime().addShutdownHook(new Thread(process::destroyForcibly, "tml-agent-stop"));
    send(descriptor.getBytes(StandardCharsets.UTF_8));
  }

  /** This JVM's agent for {@code descriptor}, started on first use (or again if it died). */
  static synchronized TmlAgent get(String descriptor, String python) throws IOException {
    if (running != null && (!running.process.isAlive() || !running.descriptor.equals(descriptor))) {
      running.stop();
      running = null;
    }
    if (running == null) {
      running = new TmlAgent(descriptor, python);
    }
    return running;
  }

  /** Stops this JVM's agent, if one runs (it exits on stdin EOF; destroy in case not). */
  static synchronized void stopRunning() {
    if (running != null) {
      running.stop();
      running = null;
    }
  }

  private void stop() {
    try {
      toAgent.close();
    } catch (IOException e) {
      // Already gone: nothing to close.
    }
    process.destroy();
  }

  private void send(byte[] payload) throws IOException {
    toAgent.writeInt(payload.length);
    toAgent.write(payload);
    toAgent.flush();
  }

  private synchronized byte[] call(byte op, String keyId, byte[] wrapped) {
    byte[] id = keyId.getBytes(StandardCharsets.UTF_8);
    int extra = wrapped == null ? 0 : wrapped.length;
    byte[] request = new byte[3 + id.length + extra];
    request[0] = op;
    request[1] = (byte) (id.length >>> 8);
    request[2] = (byte) id.length;
    System.arraycopy(id, 0, request, 3, id.length);
    if (wrapped != null) {
      System.arraycopy(wrapped, 0, request, 3 + id.length, extra);
    }
    try {
      send(request);
      int length = fromAgent.readInt();
      if (length < 1 || length > MAX_FRAME) {
        throw new IOException("the trusted-ml key agent sent a malformed frame");
      }
      byte[] reply = new byte[length];
      fromAgent.readFully(reply);
      return reply;
    } catch (EOFException e) {
      return error("the trusted-ml key agent exited (its stderr says why)");
    } catch (IOException e) {
      return error("the trusted-ml key agent failed: " + e.getMessage());
    }
  }

  private static byte[] error(String message) {
    byte[] text = message.getBytes(StandardCharsets.UTF_8);
    byte[] reply = new byte[1 + text.length];
    System.arraycopy(text, 0, reply, 1, text.length);
    return reply;
  }

  @Override
  public byte[] unwrap(String keyId, byte[] wrapped) {
    return call((byte) 'U', keyId, wrapped);
  }

  @Override
  public byte[] generate(String keyId) {
    return call((byte) 'G', keyId, null);
  }
}
