package org.trustedml.fs;

import java.io.IOException;
import java.io.OutputStream;
import java.security.GeneralSecurityException;
import java.util.Arrays;
import javax.crypto.spec.SecretKeySpec;

/**
 * Encrypts a new trusted-ml file: the header, then each full chunk once more data follows it,
 * and on close the last chunk (possibly full, possibly empty) sealed as final.
 */
final class TmlOutputStream extends OutputStream {
  private final OutputStream raw;
  private final String name;
  private final byte[] digest;
  private final SecretKeySpec key;
  private final TmlChunkCipher cipher;
  private final byte[] buffer;
  private final byte[] sealed;
  private int filled;
  private long index;
  private boolean closed;

  TmlOutputStream(OutputStream raw, String name, TmlFormat.Header header, SecretKeySpec key)
      throws IOException {
    this.raw = raw;
    this.name = name;
    this.digest = header.digest;
    this.key = key;
    this.buffer = new byte[header.chunkSize()];
    this.sealed = new byte[header.chunkSize() + TmlFormat.TAG_SIZE];
    this.cipher = new TmlChunkCipher(name);
    raw.write(header.raw);
  }

  private void ensureOpen() throws IOException {
    if (closed) {
      throw new IOException(name + ": stream is closed");
    }
  }

  private void seal(boolean isFinal) throws IOException {
    int n;
    try {
      n =
          cipher.seal(
              key, TmlFormat.nonce(index), TmlFormat.aad(digest, index, isFinal), buffer, filled,
              sealed);
    } catch (GeneralSecurityException e) {
      throw new IOException(name + ": cannot encrypt chunk " + index, e);
    }
    raw.write(sealed, 0, n);
    index++;
    filled = 0;
  }

  @Override
  public void write(int b) throws IOException {
    ensureOpen();
    if (filled == buffer.length) {
      seal(false);
    }
    buffer[filled++] = (byte) b;
  }

  @Override
  public void write(byte[] b, int off, int len) throws IOException {
    ensureOpen();
    if (off < 0 || len < 0 || len > b.length - off) {
      throw new IndexOutOfBoundsException();
    }
    while (len > 0) {
      // A full chunk is sealed only once more data follows: the last one is sealed final.
      if (filled == buffer.length) {
        seal(false);
      }
      int take = Math.min(len, buffer.length - filled);
      System.arraycopy(b, off, buffer, filled, take);
      filled += take;
      off += take;
      len -= take;
    }
  }

  @Override
  public void flush() throws IOException {
    // Nothing to do: a partial chunk cannot be sealed before the file ends.
    ensureOpen();
  }

  @Override
  public void close() throws IOException {
    if (closed) {
      return;
    }
    closed = true;
    try {
      seal(true);
    } finally {
      Arrays.fill(buffer, (byte) 0);
      raw.close();
    }
  }
}
