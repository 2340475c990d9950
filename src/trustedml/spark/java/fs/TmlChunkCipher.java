package org.trustedml.fs;

import java.io.IOException;
import java.security.GeneralSecurityException;
import java.security.InvalidAlgorithmParameterException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.Arrays;
import java.util.concurrent.atomic.AtomicBoolean;
import javax.crypto.Cipher;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.IvParameterSpec;
import javax.crypto.spec.SecretKeySpec;

/**
 * AES-256-GCM over one chunk at a time, shaped for the JDK's JIT.
 *
 * <p>The JIT uses the AES-CTR and GHASH intrinsics only once the JDK's GCM driver methods are
 * compiled, after thousands of calls. A one-shot GCM decryption of a 1 MiB chunk calls them 16
 * times, so a fresh JVM decrypted the first few hundred megabytes at ~30 MB/s. Here every
 * chunk is processed in {@link #SLICE}-byte calls, and a background warm-up with the same
 * calls under a throwaway key runs once per JVM: the fast path is reached after a few
 * megabytes.
 *
 * <p>JDK GCM decryption buffers its input and cannot be fed in slices, so {@link #open}
 * decrypts with AES-CTR from the GCM counter (inc32(J0), which cannot wrap within a chunk of at
 * most 16 MiB) into the caller's buffer, then recomputes the tag by GCM-encrypting that
 * plaintext under the same nonce (which reproduces the stored ciphertext) and compares it with
 * the stored tag in constant time. The caller returns no byte before that check passes.
 */
final class TmlChunkCipher {
  static final int SLICE = 16 * 1024;
  private static final int TAG_BITS = TmlFormat.TAG_SIZE * 8;
  // Calls, not bytes, make the JIT compile: many small ones (6 MB in all) beat fewer large.
  private static final int WARMUP_ROUNDS = 3000;
  private static final int WARMUP_SIZE = 2048;
  private static final AtomicBoolean WARMING = new AtomicBoolean();

  private final Cipher ctr;
  private Cipher gcm;
  private final byte[] scratch = new byte[SLICE + TmlFormat.TAG_SIZE];

  TmlChunkCipher(String name) throws IOException {
    try {
      ctr = Cipher.getInstance("AES/CTR/NoPadding");
      gcm = Cipher.getInstance("AES/GCM/NoPadding");
    } catch (GeneralSecurityException e) {
      throw new IOException(name + ": AES-GCM is not available in this JVM", e);
    }
  }

  /** GCM's first counter block for a 96-bit nonce: nonce || 00000002. */
  private static byte[] firstCounter(byte[] nonce) {
    byte[] counter = Arrays.copyOf(nonce, 16);
    counter[15] = 2;
    return counter;
  }

  private void initGcm(SecretKeySpec key, byte[] nonce) throws GeneralSecurityException {
    try {
      gcm.init(Cipher.ENCRYPT_MODE, key, new GCMParameterSpec(TAG_BITS, nonce));
    } catch (InvalidAlgorithmParameterException e) {
      // The JDK refuses the same key and nonce twice in a row on one object (the same chunk
      // verified again, after a failure): a new object has no memory of it.
      gcm = Cipher.getInstance("AES/GCM/NoPadding");
      gcm.init(Cipher.ENCRYPT_MODE, key, new GCMParameterSpec(TAG_BITS, nonce));
    }
  }

  /**
   * Decrypts {@code stored[0..storedLen)} (ciphertext || tag) into {@code out}; true when the
   * tag verifies. On false, {@code out} holds unauthenticated bytes the caller must discard.
   */
  boolean open(SecretKeySpec key, byte[] nonce, byte[] aad, byte[] stored, int storedLen,
      byte[] out) throws GeneralSecurityException {
    int len = storedLen - TmlFormat.TAG_SIZE;
    ctr.init(Cipher.DECRYPT_MODE, key, new IvParameterSpec(firstCounter(nonce)));
    for (int off = 0; off < len; off += SLICE) {
      ctr.update(stored, off, Math.min(SLICE, len - off), out, off);
    }
    initGcm(key, nonce);
    gcm.updateAAD(aad);
    for (int off = 0; off < len; off += SLICE) {
      gcm.update(out, off, Math.min(SLICE, len - off), scratch, 0);
    }
    int n = gcm.doFinal(scratch, 0);
    return MessageDigest.isEqual(
        Arrays.copyOfRange(scratch, n - TmlFormat.TAG_SIZE, n),
        Arrays.copyOfRange(stored, len, storedLen));
  }

  /** Encrypts {@code in[0..len)} into {@code out} (ciphertext || tag); returns its length. */
  int seal(SecretKeySpec key, byte[] nonce, byte[] aad, byte[] in, int len, byte[] out)
      throws GeneralSecurityException {
    initGcm(key, nonce);
    gcm.updateAAD(aad);
    int done = 0;
    for (int off = 0; off < len; off += SLICE) {
      done += gcm.update(in, off, Math.min(SLICE, len - off), out, done);
    }
    return done + gcm.doFinal(out, done);
  }

  /** Starts the once-per-JVM warm-up (a daemon thread; a fraction of a second of one core). */
  static void warmUp() {
    if (!WARMING.compareAndSet(false, true)) {
      return;
    }
    Thread thread = new Thread(TmlChunkCipher::runWarmUp, "tml-gcm-warmup");
    thread.setDaemon(true);
    thread.start();
  }

  private static void runWarmUp() {
    try {
      byte[] throwaway = new byte[TmlFormat.DEK_SIZE];
      new SecureRandom().nextBytes(throwaway);
      SecretKeySpec key = new SecretKeySpec(throwaway, "AES");
      TmlChunkCipher cipher = new TmlChunkCipher("warm-up");
      byte[] plain = new byte[WARMUP_SIZE];
      byte[] sealed = new byte[plain.length + TmlFormat.TAG_SIZE];
      byte[] aad = new byte[41];
      for (int i = 0; i < WARMUP_ROUNDS; i++) {
        byte[] nonce = TmlFormat.nonce(i);
        int n = cipher.seal(key, nonce, aad, plain, plain.length, sealed);
        cipher.open(key, nonce, aad, sealed, n, plain);
      }
    } catch (GeneralSecurityException | IOException e) {
      // Only speed is at stake: real operations report their own failures.
    }
  }
}
