package org.trustedml.fs;

import java.io.EOFException;
import java.io.IOException;
import java.security.GeneralSecurityException;
import java.util.Arrays;
import javax.crypto.spec.SecretKeySpec;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSExceptionMessages;
import org.apache.hadoop.fs.FSInputStream;

/**
 * The plaintext of a trusted-ml file: seekable and positioned-readable, every chunk verified
 * (AES-256-GCM) before any byte of it is returned. A few decrypted chunks are kept (Parquet
 * jumps between the footer and the column chunks).
 */
final class TmlInputStream extends FSInputStream {
  private static final int SLOTS = 4;

  private final FSDataInputStream raw;
  private final String name;
  private final TmlFormat.Header header;
  private final TmlFormat.Layout layout;
  private final SecretKeySpec key;
  private final TmlChunkCipher cipher;
  private final byte[] stored;
  private final byte[][] plain = new byte[SLOTS][];
  private final long[] slotChunk = new long[SLOTS];
  private final long[] slotUse = new long[SLOTS];
  private final long size;
  private long uses;
  private long pos;
  private boolean closed;

  TmlInputStream(
      FSDataInputStream raw,
      String name,
      TmlFormat.Header header,
      TmlFormat.Layout layout,
      SecretKeySpec key)
      throws IOException {
    this.raw = raw;
    this.name = name;
    this.header = header;
    this.layout = layout;
    this.key = key;
    this.size = layout.plaintextSize();
    Arrays.fill(slotChunk, -1);
    int largest = layout.count > 1 ? layout.chunkSize : layout.lastPlain;
    this.stored = new byte[largest + TmlFormat.TAG_SIZE];
    this.cipher = new TmlChunkCipher(name);
  }

  long size() {
    return size;
  }

  private void ensureOpen() throws IOException {
    if (closed) {
      throw new IOException(name + ": " + FSExceptionMessages.STREAM_IS_CLOSED);
    }
  }

  /** The slot holding chunk {@code index}'s verified plaintext, decrypting it if needed. */
  private int chunk(long index) throws IOException {
    int victim = 0;
    for (int i = 0; i < SLOTS; i++) {
      if (slotChunk[i] == index) {
        slotUse[i] = ++uses;
        return i;
      }
      if (slotUse[i] < slotUse[victim]) {
        victim = i;
      }
    }
    int plainLen = layout.plainSize(index);
    int storedLen = plainLen + TmlFormat.TAG_SIZE;
    try {
      raw.readFully(layout.offset(index), stored, 0, storedLen);
    } catch (EOFException e) {
      throw new TmlIntegrityException(
          name + ": chunk " + index + " is short (file changed while read)");
    }
    if (plain[victim] == null) {
      plain[victim] = new byte[Math.max(plainLen, 1)];
    } else if (plain[victim].length < plainLen) {
      Arrays.fill(plain[victim], (byte) 0);
      plain[victim] = new byte[plainLen];
    }
    slotChunk[victim] = -1;
    boolean isFinal = index == layout.count - 1;
    boolean authentic;
    try {
      authentic =
          cipher.open(
              key,
              TmlFormat.nonce(index),
              TmlFormat.aad(header.digest, index, isFinal),
              stored,
              storedLen,
              plain[victim]);
    } catch (GeneralSecurityException e) {
      throw new IOException(name + ": cannot decrypt chunk " + index, e);
    }
    if (!authentic) {
      Arrays.fill(plain[victim], (byte) 0);
      throw new TmlIntegrityException(TmlFormat.chunkFailure(name, index, layout.count));
    }
    slotChunk[victim] = index;
    slotUse[victim] = ++uses;
    return victim;
  }

  /** Copies plaintext at {@code position} into {@code b}; returns bytes copied (0 at EOF). */
  private int copy(long position, byte[] b, int off, int len) throws IOException {
    int done = 0;
    int shift = header.log2Chunk;
    long mask = layout.chunkSize - 1L;
    while (done < len && position < size) {
      long index = position >>> shift;
      int within = (int) (position & mask);
      int slot = chunk(index);
      int take = Math.min(len - done, layout.plainSize(index) - within);
      System.arraycopy(plain[slot], within, b, off + done, take);
      done += take;
      position += take;
    }
    return done;
  }

  @Override
  public synchronized int read() throws IOException {
    ensureOpen();
    if (pos >= size) {
      return -1;
    }
    int slot = chunk(pos >>> header.log2Chunk);
    int value = plain[slot][(int) (pos & (layout.chunkSize - 1L))] & 0xff;
    pos++;
    return value;
  }

  @Override
  public synchronized int read(byte[] b, int off, int len) throws IOException {
    ensureOpen();
    if (off < 0 || len < 0 || len > b.length - off) {
      throw new IndexOutOfBoundsException();
    }
    if (len == 0) {
      return 0;
    }
    if (pos >= size) {
      return -1;
    }
    int n = copy(pos, b, off, len);
    pos += n;
    return n;
  }

  @Override
  public synchronized int read(long position, byte[] b, int off, int len) throws IOException {
    ensureOpen();
    if (position < 0) {
      throw new EOFException(FSExceptionMessages.NEGATIVE_SEEK);
    }
    if (len == 0) {
      return 0;
    }
    if (position >= size) {
      return -1;
    }
    return copy(position, b, off, len);
  }

  @Override
  public synchronized void readFully(long position, byte[] b, int off, int len)
      throws IOException {
    ensureOpen();
    if (position < 0) {
      throw new EOFException(FSExceptionMessages.NEGATIVE_SEEK);
    }
    if (len > 0 && (position > size - len)) {
      throw new EOFException(FSExceptionMessages.EOF_IN_READ_FULLY);
    }
    copy(position, b, off, len);
  }

  @Override
  public synchronized void seek(long target) throws IOException {
    ensureOpen();
    if (target < 0) {
      throw new EOFException(FSExceptionMessages.NEGATIVE_SEEK);
    }
    if (target > size) {
      throw new EOFException(FSExceptionMessages.CANNOT_SEEK_PAST_EOF);
    }
    pos = target;
  }

  @Override
  public synchronized long getPos() {
    return pos;
  }

  @Override
  public boolean seekToNewSource(long targetPos) {
    return false;
  }

  @Override
  public synchronized long skip(long n) throws IOException {
    ensureOpen();
    long step = Math.max(0, Math.min(n, size - pos));
    pos += step;
    return step;
  }

  @Override
  public synchronized int available() throws IOException {
    ensureOpen();
    return (int) Math.min(Integer.MAX_VALUE, size - pos);
  }

  @Override
  public synchronized void close() throws IOException {
    if (closed) {
      return;
    }
    closed = true;
    // Plaintext does not outlive the stream (the key itself lives in the JVM's key cache).
    for (byte[] buffer : plain) {
      if (buffer != null) {
        Arrays.fill(buffer, (byte) 0);
      }
    }
    raw.close();
  }
}
