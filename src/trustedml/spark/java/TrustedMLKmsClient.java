package org.trustedml.parquet;

import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.SecureRandom;
import java.util.Arrays;
import java.util.Base64;
import java.util.HashMap;
import java.util.Map;
import java.util.regex.Pattern;
import javax.crypto.AEADBadTagException;
import javax.crypto.Cipher;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;
import org.apache.hadoop.conf.Configuration;
import org.apache.parquet.crypto.KeyAccessDeniedException;
import org.apache.parquet.crypto.ParquetCryptoRuntimeException;
import org.apache.parquet.crypto.keytools.KmsClient;

/**
 * Parquet KMS client over trusted-ml key-encryption keys; wrapped keys are byte-for-byte the
 * format of trustedml.hazmat.keywrap (base64), so pyarrow and Spark read each other's files.
 */
public final class TrustedMLKmsClient implements KmsClient {
  // Read from the environment, not the Hadoop conf: conf values reach logs and the UI.
  static final String ENV = "TRUSTEDML_KEYRING";
  private static final byte VERSION = 1;
  private static final int NONCE = 12;
  private static final int TAG_BITS = 128;
  private static final byte[] AAD_PREFIX = "trustedml/wrap/v1\0".getBytes(StandardCharsets.UTF_8);
  private static final Pattern KEY_ID = Pattern.compile("[A-Za-z0-9][A-Za-z0-9._-]{0,63}");
  private static final SecureRandom RANDOM = new SecureRandom();

  private Map<String, SecretKeySpec> keks = Map.of();

  @Override
  public void initialize(Configuration conf, String instanceId, String instanceUrl, String token) {
    String spec = System.getenv(ENV);
    Map<String, SecretKeySpec> parsed = new HashMap<>();
    // Unset means "no keys": the failure then names the key id a file needs.
    for (String entry : spec == null || spec.isEmpty() ? new String[0] : spec.split(",")) {
      int colon = entry.indexOf(':');
      String id = colon < 0 ? "" : entry.substring(0, colon);
      // Messages quote only a valid id: anything else might be key material.
      if (!KEY_ID.matcher(id).matches()) {
        throw new ParquetCryptoRuntimeException(ENV + ": expected id:base64key entries");
      }
      byte[] kek;
      try {
        kek = Base64.getDecoder().decode(entry.substring(colon + 1));
      } catch (IllegalArgumentException e) {
        throw new ParquetCryptoRuntimeException(ENV + ": key '" + id + "' is not base64");
      }
      if (kek.length != 32) {
        throw new ParquetCryptoRuntimeException(ENV + ": key '" + id + "' is not 32 bytes");
      }
      parsed.put(id, new SecretKeySpec(kek, "AES"));
      Arrays.fill(kek, (byte) 0);
    }
    keks = Map.copyOf(parsed);
  }

  private SecretKeySpec kek(String id) {
    SecretKeySpec kek = id == null ? null : keks.get(id);
    if (kek == null) {
      throw new KeyAccessDeniedException(
          "no key-encryption key '" + id + "' in " + ENV + " (it holds " + keks.size() + ")");
    }
    return kek;
  }

  // The key id is authenticated, so a wrapped key moved under another id fails to unwrap.
  private static Cipher cipher(int mode, SecretKeySpec kek, byte[] nonce, String id)
      throws GeneralSecurityException {
    Cipher c = Cipher.getInstance("AES/GCM/NoPadding");
    c.init(mode, kek, new GCMParameterSpec(TAG_BITS, nonce));
    c.updateAAD(AAD_PREFIX);
    c.updateAAD(id.getBytes(StandardCharsets.UTF_8));
    return c;
  }

  @Override
  public String wrapKey(byte[] key, String id) {
    SecretKeySpec kek = kek(id);
    byte[] nonce = new byte[NONCE];
    RANDOM.nextBytes(nonce);
    try {
      byte[] sealed = cipher(Cipher.ENCRYPT_MODE, kek, nonce, id).doFinal(key);
      byte[] out = new byte[1 + NONCE + sealed.length];
      out[0] = VERSION;
      System.arraycopy(nonce, 0, out, 1, NONCE);
      System.arraycopy(sealed, 0, out, 1 + NONCE, sealed.length);
      return Base64.getEncoder().encodeToString(out);
    } catch (GeneralSecurityException e) {
      throw new ParquetCryptoRuntimeException("cannot wrap a key with '" + id + "'", e);
    }
  }

  @Override
  public byte[] unwrapKey(String wrapped, String id) {
    SecretKeySpec kek = kek(id);
    byte[] raw;
    try {
      raw = Base64.getDecoder().decode(wrapped);
    } catch (IllegalArgumentException e) {
      raw = new byte[0];
    }
    if (raw.length < 1 + NONCE + TAG_BITS / 8 || raw[0] != VERSION) {
      throw new ParquetCryptoRuntimeException("wrapped key for '" + id + "' is malformed");
    }
    try {
      byte[] nonce = Arrays.copyOfRange(raw, 1, 1 + NONCE);
      Cipher c = cipher(Cipher.DECRYPT_MODE, kek, nonce, id);
      return c.doFinal(raw, 1 + NONCE, raw.length - 1 - NONCE);
    } catch (AEADBadTagException e) {
      throw new KeyAccessDeniedException(
          "cannot unwrap the data key with key-encryption key '" + id
              + "' (wrong key, or the wrapped key was modified)");
    } catch (GeneralSecurityException e) {
      throw new ParquetCryptoRuntimeException("cannot unwrap a key with '" + id + "'", e);
    }
  }
}
