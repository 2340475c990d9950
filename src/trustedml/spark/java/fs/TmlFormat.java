package org.trustedml.fs;

import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.nio.ByteBuffer;
import java.util.Arrays;

/**
 * The trusted-ml file format, version 1 (docs/format.md): header parsing and building, the
 * chunk layout computed from the file size, and the per-chunk nonce and AAD. Validation order
 * and messages follow trustedml/hazmat/framing.py byte for byte.
 */
final class TmlFormat {
  static final byte[] MAGIC = "TMLDATA1".getBytes(StandardCharsets.US_ASCII);
  static final int FORMAT_VERSION = 1;
  static final int CIPHER_AES_256_GCM = 1;
  static final int TAG_SIZE = 16;
  static final int DEK_SIZE = 32;
  static final int FILE_ID_SIZE = 16;
  static final int MIN_LOG2_CHUNK = 12;
  static final int MAX_LOG2_CHUNK = 24;
  static final int DEFAULT_LOG2_CHUNK = 20;
  static final int MAX_KEY_ID = 128;
  static final int MAX_WRAPPED = 1024;
  static final int FIXED_SIZE = 29;
  static final int MAX_HEADER_SIZE = FIXED_SIZE + MAX_KEY_ID + 2 + MAX_WRAPPED;
  static final String SUFFIX = ".tml";

  private TmlFormat() {}

  /** A parsed header; {@code raw} is its exact bytes, bound into every chunk's AAD. */
  static final class Header {
    final int log2Chunk;
    final String keyId;
    final byte[] wrapped;
    final byte[] raw;
    final byte[] digest;

    Header(int log2Chunk, String keyId, byte[] wrapped, byte[] raw) {
      this.log2Chunk = log2Chunk;
      this.keyId = keyId;
      this.wrapped = wrapped;
      this.raw = raw;
      this.digest = sha256(raw);
    }

    int chunkSize() {
      return 1 << log2Chunk;
    }

    int size() {
      return raw.length;
    }
  }

  /** Where each chunk lies in a file of a given size. */
  static final class Layout {
    final int headerSize;
    final int chunkSize;
    final long count;
    final int lastPlain;

    Layout(int headerSize, int chunkSize, long count, int lastPlain) {
      this.headerSize = headerSize;
      this.chunkSize = chunkSize;
      this.count = count;
      this.lastPlain = lastPlain;
    }

    long stride() {
      return (long) chunkSize + TAG_SIZE;
    }

    long plaintextSize() {
      return (count - 1) * chunkSize + lastPlain;
    }

    long offset(long index) {
      return headerSize + index * stride();
    }

    int plainSize(long index) {
      return index == count - 1 ? lastPlain : chunkSize;
    }
  }

  static byte[] sha256(byte[] data) {
    try {
      return MessageDigest.getInstance("SHA-256").digest(data);
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("SHA-256 missing from this JVM", e);
    }
  }

  /** Parse a header from the first {@code length} bytes of {@code data} (which may hold more). */
  static Header parse(byte[] data, int length, String name) throws TmlIntegrityException {
    if (length < MAGIC.length || !Arrays.equals(data, 0, MAGIC.length, MAGIC, 0, MAGIC.length)) {
      throw new TmlIntegrityException(name + ": not a trusted-ml file (bad magic)");
    }
    if (length < FIXED_SIZE) {
      throw new TmlIntegrityException(name + ": header truncated");
    }
    int version = data[8] & 0xff;
    int cipher = data[9] & 0xff;
    int log2Chunk = data[10] & 0xff;
    int flags = data[11] & 0xff;
    int klen = data[28] & 0xff;
    if (version != FORMAT_VERSION) {
      throw new TmlIntegrityException(
          name + ": unsupported format version: expected " + FORMAT_VERSION + ", got " + version);
    }
    if (cipher != CIPHER_AES_256_GCM) {
      throw new TmlIntegrityException(
          name + ": unsupported cipher id: expected " + CIPHER_AES_256_GCM + ", got " + cipher);
    }
    if (log2Chunk < MIN_LOG2_CHUNK || log2Chunk > MAX_LOG2_CHUNK) {
      throw new TmlIntegrityException(
          name + ": chunk size 2**" + log2Chunk + " outside 2**" + MIN_LOG2_CHUNK + "..2**"
              + MAX_LOG2_CHUNK);
    }
    if (flags != 0) {
      throw new TmlIntegrityException(
          name + ": unknown header flags " + String.format("%#04x", flags));
    }
    if (klen < 1 || klen > MAX_KEY_ID) {
      throw new TmlIntegrityException(
          name + ": key id length " + klen + " outside 1.." + MAX_KEY_ID);
    }
    int pos = FIXED_SIZE + klen;
    if (length < pos + 2) {
      throw new TmlIntegrityException(name + ": header truncated");
    }
    String keyId;
    try {
      keyId =
          StandardCharsets.UTF_8
              .newDecoder()
              .onMalformedInput(CodingErrorAction.REPORT)
              .onUnmappableCharacter(CodingErrorAction.REPORT)
              .decode(ByteBuffer.wrap(data, FIXED_SIZE, klen))
              .toString();
    } catch (CharacterCodingException e) {
      throw new TmlIntegrityException(name + ": key id is not UTF-8");
    }
    int wlen = ((data[pos] & 0xff) << 8) | (data[pos + 1] & 0xff);
    if (wlen < 1 || wlen > MAX_WRAPPED) {
      throw new TmlIntegrityException(
          name + ": wrapped key length " + wlen + " outside 1.." + MAX_WRAPPED);
    }
    int end = pos + 2 + wlen;
    if (length < end) {
      throw new TmlIntegrityException(name + ": header truncated");
    }
    return new Header(
        log2Chunk, keyId, Arrays.copyOfRange(data, pos + 2, end), Arrays.copyOf(data, end));
  }

  /** A new header (the writer's): callers have checked the key id and chunk size. */
  static Header build(String keyId, byte[] wrapped, int log2Chunk, byte[] fileId) {
    byte[] kid = keyId.getBytes(StandardCharsets.UTF_8);
    if (kid.length < 1 || kid.length > MAX_KEY_ID) {
      throw new IllegalArgumentException(
          "key id must be 1.." + MAX_KEY_ID + " UTF-8 bytes, got " + kid.length);
    }
    if (wrapped.length < 1 || wrapped.length > MAX_WRAPPED) {
      throw new IllegalArgumentException(
          "wrapped key must be 1.." + MAX_WRAPPED + " bytes, got " + wrapped.length);
    }
    ByteBuffer out = ByteBuffer.allocate(FIXED_SIZE + kid.length + 2 + wrapped.length);
    out.put(MAGIC).put((byte) FORMAT_VERSION).put((byte) CIPHER_AES_256_GCM);
    out.put((byte) log2Chunk).put((byte) 0).put(fileId).put((byte) kid.length).put(kid);
    out.putShort((short) wrapped.length).put(wrapped);
    return new Header(log2Chunk, keyId, wrapped.clone(), out.array());
  }

  static Layout layout(Header header, long fileSize, String name) throws TmlIntegrityException {
    long body = fileSize - header.size();
    long stride = (long) header.chunkSize() + TAG_SIZE;
    if (body < TAG_SIZE) {
      throw new TmlIntegrityException(
          name + ": truncated: no complete chunk after the header");
    }
    long count = (body + stride - 1) / stride;
    long last = body - (count - 1) * stride;
    if (last < TAG_SIZE) {
      throw new TmlIntegrityException(
          name + ": truncated: the last chunk is shorter than its tag");
    }
    return new Layout(header.size(), header.chunkSize(), count, (int) (last - TAG_SIZE));
  }

  /** Nonce of chunk {@code index}: 4 zero bytes then the index, big-endian. */
  static byte[] nonce(long index) {
    return ByteBuffer.allocate(12).putInt(0).putLong(index).array();
  }

  /** AAD of chunk {@code index}: SHA-256(header) || uint64 index || final flag. */
  static byte[] aad(byte[] digest, long index, boolean isFinal) {
    return ByteBuffer.allocate(41)
        .put(digest)
        .putLong(index)
        .put((byte) (isFinal ? 1 : 0))
        .array();
  }

  static String chunkFailure(String name, long index, long count) {
    return name + ": chunk " + index + " of " + count
        + " failed authentication (modified, truncated, reordered or extended file, or wrong key)";
  }
}
