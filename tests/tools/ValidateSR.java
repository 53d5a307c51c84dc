// PixelMed's DICOM SR validator over several files in one JVM (its own main takes one file):
//   java -cp /usr/share/java/pixelmed.jar tests/tools/ValidateSR.java FILE...
// Prints "=== FILE" before each file's report.
import com.pixelmed.validate.DicomSRValidator;

public class ValidateSR {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String file : args) {
            System.out.println("=== " + file);
            System.out.println(validator.validate(file));
        }
    }
}
